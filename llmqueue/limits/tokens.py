"""Token estimates for the limiter, made before a call and reconciled after it."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import litellm

from llmqueue.models import Job


@dataclass(frozen=True)
class TokenEstimate:
    """A job's tokens before the call: its prompt, and the completion it may produce."""

    prompt: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


NO_ESTIMATE = TokenEstimate()


def estimate_split(job: Job, model: str, default_completion_tokens: int) -> TokenEstimate:
    """Prompt tokens (LiteLLM's counter for the model), and the completion the job may produce.

    The completion part is the job's ``max_tokens`` (or ``max_completion_tokens``) when set, else
    ``default_completion_tokens``. Embedding jobs have no completion.
    """
    if job.kind == "embedding":
        texts = [job.input] if isinstance(job.input, str) else list(job.input or [])
        return TokenEstimate(sum(_count_text(model, text) for text in texts))
    return TokenEstimate(
        _count_messages(model, job.messages), completion_allowance(job, default_completion_tokens)
    )


def estimate_tokens(job: Job, model: str, default_completion_tokens: int) -> int:
    """Prompt plus completion tokens of :func:`estimate_split`."""
    return estimate_split(job, model, default_completion_tokens).total


def completion_allowance(job: Job, default_completion_tokens: int) -> int:
    """The completion tokens a chat job may use: ``max_completion_tokens``, ``max_tokens`` or the default."""
    if job.kind == "embedding":
        return 0
    limit = job.params.get("max_completion_tokens", job.params.get("max_tokens"))
    return int(limit) if isinstance(limit, int | float) else default_completion_tokens


class CompletionSizes:
    """The completions a worker's recent answers produced, per model, for the token limit's reservation
    of a job that sets no ``max_tokens``: the largest of the last ``SAMPLES`` (a high percentile that
    follows the workload), once ``SAMPLES_NEEDED`` are in, never above ``default_completion_tokens``.

    Reserving the default (1024) for answers of 20 tokens would space calls by twice what the provider
    charges: a call's send time is fixed at its admission, before its tokens come back.
    """

    SAMPLES = 20
    SAMPLES_NEEDED = 3

    def __init__(self) -> None:
        self._recent: dict[str, deque[int]] = {}

    def observe(self, model: str, completion_tokens: int) -> None:
        self._recent.setdefault(model, deque(maxlen=self.SAMPLES)).append(completion_tokens)

    def allowance(self, model: str, default_completion_tokens: int) -> int:
        recent = self._recent.get(model)
        if recent is None or len(recent) < self.SAMPLES_NEEDED:
            return default_completion_tokens
        return min(default_completion_tokens, max(recent))


def usage_tokens(response: Any, field: str = "total_tokens") -> int | None:
    """Tokens the provider reports having used (``total_tokens``, or ``prompt_tokens``,
    ``completion_tokens``), or None when it reports none."""
    value = _field(_field(response, "usage"), field)
    return int(value) if isinstance(value, int | float) else None


def uncached_prompt_tokens(response: Any) -> int | None:
    """Prompt tokens less those read from the provider's prompt cache (``prompt_tokens_details.
    cached_tokens``, where LiteLLM also puts Anthropic's ``cache_read_input_tokens``): what an input
    token limit counts (Anthropic's ITPM leaves cache reads out). None when no usage is reported."""
    prompt = usage_tokens(response, "prompt_tokens")
    if prompt is None:
        return None
    cached = _field(_field(_field(response, "usage"), "prompt_tokens_details"), "cached_tokens")
    return max(0, prompt - int(cached)) if isinstance(cached, int | float) else prompt


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of a dict, else its attribute ``name`` (LiteLLM's objects, or None)."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _count_messages(model: str, messages: list[dict[str, Any]]) -> int:
    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:
        # LiteLLM cannot count every content shape; a rough 4 characters a token keeps the limiter honest.
        return sum(_rough(str(m.get("content", ""))) + 4 for m in messages)


def _count_text(model: str, text: str) -> int:
    try:
        return int(litellm.token_counter(model=model, text=text))
    except Exception:
        return _rough(text)


def _rough(text: str) -> int:
    return math.ceil(len(text) / 4)
