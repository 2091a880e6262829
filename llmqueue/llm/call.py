"""Make one LiteLLM call (its arguments come from :mod:`llmqueue.llm.request`), and what needs LiteLLM
itself: its prompt-caching verdict and the worker's warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import litellm
from litellm.utils import supports_prompt_caching as _litellm_supports_prompt_caching

from llmqueue.llm import litellm_defaults

litellm_defaults.apply()


@functools.lru_cache(maxsize=256)
def supports_prompt_caching(model: str) -> bool:
    """LiteLLM's verdict; unknown models count as not supporting it."""
    try:
        return bool(_litellm_supports_prompt_caching(model=model))
    except Exception:
        return False


async def call_provider(kind: str, kwargs: dict[str, Any], timeout: float) -> Any:
    """Make the call, bounded by ``timeout`` seconds even if the HTTP client's own timeout fails us.

    The call runs in the caller's task (``asyncio.timeout``, not ``wait_for``'s task of its own), so
    the caller goes on with the answer in the same step, before LiteLLM's logging of it gets the loop.
    """
    call = litellm.aembedding if kind == "embedding" else litellm.acompletion
    async with asyncio.timeout(timeout):
        return await call(**kwargs)


async def stream_provider(
    kwargs: dict[str, Any], timeout: float, on_delta: Callable[[str], Awaitable[None]]
) -> Any:
    """Make a chat call streamed (``stream=True``, usage included), passing each text delta to
    ``on_delta`` as it comes; return the whole answer built from the chunks (LiteLLM's
    ``stream_chunk_builder``: the same response object as a call not streamed, usage and cost included).
    The whole stream is bounded by ``timeout`` seconds."""
    streamed = {**kwargs, "stream": True, "stream_options": {"include_usage": True}}
    chunks = []
    async with asyncio.timeout(timeout):
        async for chunk in await litellm.acompletion(**streamed):
            chunks.append(chunk)
            choices = getattr(chunk, "choices", None)
            delta = getattr(choices[0], "delta", None) if choices else None
            text = getattr(delta, "content", None)
            if isinstance(text, str) and text:
                await on_delta(text)
    return litellm.stream_chunk_builder(chunks, messages=kwargs.get("messages"))


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
