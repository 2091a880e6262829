"""Turn a job and the worker's LLM settings into one LiteLLM call, and make it.

Everything here but :func:`call_provider` is pure, so how each setting reaches the call is tested
without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import socket
from typing import Any

import litellm
from litellm.utils import supports_prompt_caching as _litellm_supports_prompt_caching

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


def call_kwargs(job: Job, llm: LLMConfig, *, supports_caching: bool) -> dict[str, Any]:
    """The keyword arguments for ``litellm.acompletion`` / ``aembedding``.

    LiteLLM's and the OpenAI SDK's own retries are off (``num_retries=0``, ``max_retries=0``): attempts
    are counted in one place, the worker.
    """
    kwargs: dict[str, Any] = dict(job.params)
    kwargs.update(model=job_model(job, llm), timeout=llm.timeout, num_retries=0, max_retries=0)
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


@functools.lru_cache(maxsize=256)
def supports_prompt_caching(model: str) -> bool:
    """LiteLLM's verdict; unknown models count as not supporting it."""
    try:
        return bool(_litellm_supports_prompt_caching(model=model))
    except Exception:
        return False


async def call_provider(kind: str, kwargs: dict[str, Any], timeout: float) -> Any:
    """Make the call, bounded by ``timeout`` seconds even if the HTTP client's own timeout fails us."""
    call = litellm.aembedding if kind == "embedding" else litellm.acompletion
    return await asyncio.wait_for(call(**kwargs), timeout)


def _is_image(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image")


async def warm_up() -> None:
    """Send one LiteLLM request to a local port that refuses it, and ignore the refusal.

    A process's first LiteLLM call spends ~0.5 s importing provider modules and building HTTP clients.
    Paid here, at start-up, it does not delay the first burst of admitted requests, which would then
    reach the provider bunched together with later ones. No provider is involved: the connection is
    refused on this machine, after everything up to the socket has been built.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with contextlib.suppress(Exception):
        await litellm.acompletion(
            model="openai/warm-up",
            api_base=f"http://127.0.0.1:{closed_port}/v1",
            api_key="warm-up",
            messages=[{"role": "user", "content": "warm up"}],
            num_retries=0,
            max_retries=0,
            timeout=5,
        )
