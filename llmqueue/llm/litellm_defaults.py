"""The LiteLLM settings of every llmqueue process that calls LiteLLM: no retries of its own, no banner.

They are LiteLLM's module-wide settings, so they hold for the whole process: an application that runs a
worker (or the Batch API tier) in its own process gets them for its own LiteLLM calls too.
"""

from __future__ import annotations

import litellm


def apply() -> None:
    # LiteLLM's OpenAI-compatible embedding calls turn max_retries=0 into this default
    # (BerriAI/litellm#7003), and the OpenAI SDK would then retry a 429 inside the worker's slot, with
    # requests the limiter never admitted. Every retry is llmqueue's to make: none here.
    litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[attr-defined]
    # The "Give Feedback / Get Help" banner, printed on stdout for every error LiteLLM maps (each 429):
    # a worker's own job events report each failed call with the provider's message, and `llmqueue
    # submit` prints the batch id on stdout for scripts to read.
    litellm.suppress_debug_info = True
