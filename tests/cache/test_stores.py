"""The response stores: SQLite on disk (shared by processes) and Redis, with TTL and a size limit."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue.cache.disk import FILE_NAME, HIT_FLUSH_EVERY, DiskStore
from llmqueue.cache.redis_store import RedisStore
from llmqueue.cache.store import CacheStore
from llmqueue.errors import CacheError

ANSWER = {
    "id": "chatcmpl-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "negative"}}],
}


def answer(text: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{text}", "choices": [{"message": {"role": "assistant", "content": text}}]}


@pytest.fixture(params=["disk", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheStore]:
    made: CacheStore
    client = None
    if request.param == "disk":
        made = DiskStore(tmp_path, ttl=None, max_bytes=10_000_000)
    else:
        client = Redis.from_url(request.getfixturevalue("redis_url"))
        made = RedisStore(client, ttl=None, max_bytes=10_000_000)
    try:
        yield made
    finally:
        await made.close()
        if client is not None:
            await client.aclose()


async def test_a_stored_response_comes_back_and_counts_a_hit(store: CacheStore) -> None:
    assert await store.get("k1") is None
    assert not await store.has("k1")
    await store.put("k1", ANSWER)
    assert await store.has("k1")
    assert await store.get("k1") == ANSWER
    stats = await store.stats()
    assert (stats.entries, stats.hits) == (1, 1)
    assert stats.bytes > 50


async def test_clear_removes_everything(store: CacheStore) -> None:
    for n in range(3):
        await store.put(f"k{n}", answer(str(n)))
    assert await store.clear() == 3
    assert await store.get("k0") is None
    assert (await store.stats()).entries == 0


async def test_disk_entries_expire_after_the_ttl(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, ttl=0.3, max_bytes=10_000_000)
    try:
        await store.put("k", ANSWER)
        assert await store.get("k") == ANSWER
        await asyncio.sleep(0.5)
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_redis_entries_expire_after_the_ttl(redis: Redis) -> None:
    store = RedisStore(redis, ttl=0.3, max_bytes=10_000_000)
    await store.put("k", ANSWER)
    assert await store.get("k") == ANSWER
    await asyncio.sleep(0.5)
    assert await store.get("k") is None
    assert (await store.stats()).entries == 0


async def test_disk_size_limit_evicts_the_least_recently_used(tmp_path: Path) -> None:
    size = len(b'{"id":"chatcmpl-000","choices":[{"message":{"role":"assistant","content":"000"}}]}')
    store = DiskStore(tmp_path, ttl=None, max_bytes=size * 3)
    try:
        for n in range(3):
            await store.put(f"k{n}", answer(f"{n:03d}"))
            time.sleep(0.01)
        await store.get("k0")  # used again: k1 is now the least recently used
        await store._run(store._evict)  # what every EVICTION_CHECK_EVERY-th put does
        await store.put("k3", answer("003"))
        await store._run(store._evict)
        assert await store.get("k1") is None
        assert await store.get("k0") is not None and await store.get("k3") is not None
        assert (await store.stats()).bytes <= size * 3
    finally:
        await store.close()


async def test_disk_hits_are_written_in_batches_and_all_reach_the_file(tmp_path: Path) -> None:
    reader, other = (
        DiskStore(tmp_path, ttl=None, max_bytes=10**6),
        DiskStore(tmp_path, ttl=None, max_bytes=10**6),
    )
    try:
        await reader.put("k0", ANSWER)
        for _ in range(3):
            assert await reader.get("k0") == ANSWER
        assert (await other.stats()).hits == 0  # still counted in the reading process
        for n in range(1, HIT_FLUSH_EVERY + 1):
            await reader.put(f"k{n}", answer(str(n)))
            await reader.get(f"k{n}")
        # One write when the 256th key was hit (k0's 3 hits and k1 … k255's), k256's hit still pending ...
        assert (await other.stats()).hits == 3 + HIT_FLUSH_EVERY - 1
    finally:
        await reader.close()  # ... and the rest on the way out
    try:
        assert (await other.stats()).hits == HIT_FLUSH_EVERY + 3
    finally:
        await other.close()


async def test_redis_size_limit_evicts_the_least_recently_used(redis: Redis) -> None:
    size = len('{"id":"chatcmpl-000","choices":[{"message":{"role":"assistant","content":"000"}}]}')
    store = RedisStore(redis, ttl=None, max_bytes=size * 3)
    for n in range(3):
        await store.put(f"k{n}", answer(f"{n:03d}"))
    await store.get("k0")
    await store.put("k3", answer("003"))
    assert await store.get("k1") is None
    assert await store.get("k0") is not None and await store.get("k3") is not None
    assert (await store.stats()).bytes == size * 3


def _write_many(directory: str, worker: int) -> None:
    async def go() -> None:
        store = DiskStore(Path(directory), ttl=None, max_bytes=10_000_000)
        for n in range(200):
            await store.put(f"w{worker}-{n}", answer(f"{worker}-{n}"))
        await store.close()

    asyncio.run(go())


async def test_disk_store_takes_writes_from_several_processes_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        await asyncio.to_thread(process.join, 60)
        assert process.exitcode == 0
    store = DiskStore(tmp_path, ttl=None, max_bytes=10_000_000)
    try:
        assert (await store.stats()).entries == 600
        assert await store.get("w2-199") == answer("2-199")
    finally:
        await store.close()


def test_a_file_that_is_not_a_database_is_a_cache_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match="cannot use the response cache"):
        DiskStore(tmp_path, ttl=None, max_bytes=1000)


def test_an_unwritable_place_is_a_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot use the response cache"):
        DiskStore(blocker / "cache", ttl=None, max_bytes=1000)
