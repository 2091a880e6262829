"""The cache key of a call: a hash of what the provider would see, and nothing else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from llmqueue.llm.request import call_kwargs
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

KEY_VERSION = 1
"""Bumped when the key's recipe changes, so old entries are not read with a new meaning."""

IGNORED = frozenset(
    {
        # How the call is made, not what is asked: the answer does not depend on them.
        "timeout",
        "num_retries",
        "max_retries",
        "drop_params",
        "metadata",
        # Credentials: never hashed into anything that is stored.
        "api_key",
        "azure_ad_token",
        "aws_secret_access_key",
        "aws_access_key_id",
    }
)


def request_key(kind: str, kwargs: Mapping[str, Any]) -> str:
    """A SHA-256 hex key for a LiteLLM call of ``kind`` (``chat``/``embedding``) with ``kwargs``.

    ``kwargs`` are the ones the call is made with (:func:`llmqueue.llm.request.call_kwargs`): the model as
    resolved, the messages or input as sent, every parameter that can change the answer (temperature,
    max_tokens, tools, seed …) and the endpoint (``api_base``, ``api_version``), so two providers serving
    the same model name do not share answers. Timeouts, retry counts and credentials are left out, and
    so is everything about the job itself (its id, custom_id, batch): the same request from two batches
    is one entry. Keys of mappings are sorted, so the order parameters were written in does not matter.
    """
    asked = {name: value for name, value in kwargs.items() if name not in IGNORED}
    text = json.dumps(
        {"v": KEY_VERSION, "kind": kind, "call": asked},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def job_cache_key(job: Job, llm: LLMConfig, model: str | None = None) -> str:
    """The key of ``job`` sent with the settings ``llm``: :func:`request_key` of its call's arguments
    without prompt-caching marks, which change how the provider bills the prompt, not the answer. So the
    key needs no LiteLLM (whose verdict decides the marks): ``llmqueue run`` answers lines from the cache
    before its workers have imported it, and live runs, dry runs and the Batch API tier share keys.
    ``model``: the fallback the job is sent to instead of its own (its answer is not the own model's)."""
    return request_key(job.kind, call_kwargs(job, llm, supports_caching=None, model=model))
