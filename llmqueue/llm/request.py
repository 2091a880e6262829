"""Turn a job and the worker's LLM settings into the arguments of one LiteLLM call.

Pure, and free of LiteLLM's import for calls to ``[llm] model``: how each setting reaches the call is
tested without HTTP, and a process that only needs a request's cache key (``llmqueue run`` answering
lines from the cache) does not spend seconds importing LiteLLM for it. A call to another model asks
LiteLLM which provider serves it (whether ``[llm]``'s credentials go with it).
"""

from __future__ import annotations

import copy
from typing import Any

from llmqueue.llm.policy import carries_credentials
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

CACHE_CONTROL = {"type": "ephemeral"}


def job_model(job: Job, llm: LLMConfig) -> str:
    """The model string a job is sent to."""
    if job.model:
        return job.model
    if job.kind == "embedding":
        return llm.embedding_deployment_name or llm.embedding_model
    return llm.model


def call_kwargs(
    job: Job, llm: LLMConfig, *, supports_caching: bool, model: str | None = None
) -> dict[str, Any]:
    """The keyword arguments for ``litellm.acompletion`` / ``aembedding``, sent to ``model`` (a fallback
    of the job's own, once its retries are spent) or else to the job's model.

    LiteLLM's and the OpenAI SDK's own retries are off (``num_retries=0``, ``max_retries=0``): attempts
    are counted in one place, the worker.
    """
    kwargs: dict[str, Any] = dict(job.params)
    kwargs.update(model=model or job_model(job, llm), timeout=llm.timeout, num_retries=0, max_retries=0)
    # [llm]'s credentials and endpoint go only to their own provider (policy.carries_credentials).
    if (llm.api_key is not None or llm.base_url or llm.api_version) and carries_credentials(
        kwargs["model"], llm
    ):
        if llm.api_key is not None:
            kwargs["api_key"] = llm.api_key.get_secret_value()
        if llm.base_url:
            kwargs["api_base"] = llm.base_url
        if llm.api_version:
            kwargs["api_version"] = llm.api_version
    if llm.drop_params:
        kwargs["drop_params"] = True
    if job.kind == "embedding":
        kwargs["input"] = job.input
        return kwargs
    messages = job.messages
    if llm.disable_vision:
        messages = strip_images(messages)
    if llm.caching_prompt and supports_caching:
        messages = mark_cache_points(messages)
    kwargs["messages"] = messages
    return kwargs


def strip_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages without image parts (``disable_vision``); text parts are kept in order."""
    stripped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [p for p in content if not _is_image(p)]}
        stripped.append(message)
    return stripped


def mark_cache_points(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``cache_control`` to the system prompt and the last two user messages (as OpenHands does)."""
    marked = copy.deepcopy(messages)
    targets = [m for m in marked if m.get("role") == "system"][:1]
    targets += [m for m in marked if m.get("role") == "user"][-2:]
    for message in targets:
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = [{"type": "text", "text": content, "cache_control": CACHE_CONTROL}]
        elif isinstance(content, list) and content and isinstance(content[-1], dict):
            content[-1] = {**content[-1], "cache_control": CACHE_CONTROL}
    return marked


def _is_image(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image")
