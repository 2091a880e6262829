"""``llmqueue cache stats`` and ``llmqueue cache clear``: the response cache."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer

from llmqueue.batches.display import format_seconds
from llmqueue.cache import CacheStats, CacheStore, open_store
from llmqueue.cli.common import (
    CacheDirOption,
    ConfigOption,
    RedisOption,
    app,
    console,
    settings_from,
    with_cache_dir,
)
from llmqueue.connection import redis_client
from llmqueue.settings import Settings

T = TypeVar("T")

cache_app = typer.Typer(help="The response cache: what is in it, and emptying it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command()
def stats(
    config: ConfigOption = None, redis_url: RedisOption = None, cache_dir: CacheDirOption = None
) -> None:
    """Where the cache is, how many answers it holds, their size and how often they were reused."""
    current = _with_store(with_cache_dir(settings_from(config, redis_url), cache_dir), lambda s: s.stats())
    typer.echo(describe(current))


@cache_app.command()
def clear(
    config: ConfigOption = None, redis_url: RedisOption = None, cache_dir: CacheDirOption = None
) -> None:
    """Remove every cached answer (the next runs call the provider again)."""
    count = _with_store(with_cache_dir(settings_from(config, redis_url), cache_dir), lambda s: s.clear())
    console.print(f"{count} cached answer(s) removed")


def describe(stats: CacheStats) -> str:
    ttl = "none" if stats.ttl is None else format_seconds(stats.ttl)
    return "\n".join(
        [
            f"backend   {stats.backend} ({stats.location})",
            f"entries   {stats.entries}",
            f"size      {stats.bytes / 2**20:.2f} MB of {stats.max_bytes / 2**20:.0f} MB",
            f"hits      {stats.hits}",
            f"ttl       {ttl}",
        ]
    )


def _with_store(settings: Settings, action: Callable[[CacheStore], Awaitable[T]]) -> T:
    async def go() -> T:
        redis = (
            redis_client(settings.redis_url.get_secret_value()) if settings.cache.backend == "redis" else None
        )
        store = open_store(settings.cache, redis)
        try:
            return await action(store)
        finally:
            await store.close()
            if redis is not None:
                await redis.aclose()

    return asyncio.run(go())
