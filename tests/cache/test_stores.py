"""The response stores: SQLite on disk (shared by processes) and Redis, with TTL and a size limit."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue.cache import disk
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


def _total_and_sum(store: DiskStore) -> tuple[int, int]:
    with sqlite3.connect(store.path) as db:
        (total,) = db.execute("SELECT bytes FROM totals").fetchone()
        (summed,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
    return int(total), int(summed)


async def test_disk_size_total_follows_every_kind_of_write(tmp_path: Path) -> None:
    size = len(b'{"id":"chatcmpl-000","choices":[{"message":{"role":"assistant","content":"000"}}]}')
    store = DiskStore(tmp_path, ttl=0.3, max_bytes=size * 4)
    try:
        for n in range(3):
            await store.put(f"k{n}", answer(f"{n:03d}"))
        assert _total_and_sum(store) == (size * 3, size * 3)
        await store.put("k1", answer("a much longer answer than before"))  # the same key, a new size
        total, summed = _total_and_sum(store)
        assert total == summed > size * 3
        for n in range(3, 6):  # over the limit: the eviction deletes
            await store.put(f"k{n}", answer(f"{n:03d}"))
        await store._run(store._evict)
        total, summed = _total_and_sum(store)
        assert total == summed <= size * 4
        await asyncio.sleep(0.4)
        assert await store.get("k5") is None  # expired: deleted on read
        await store._run(store._evict)  # and the rest by the sweep
        assert _total_and_sum(store) == (0, 0)
        await store.put("k6", ANSWER)
        await store.clear()
        assert _total_and_sum(store) == (0, 0)
    finally:
        await store.close()


async def test_disk_size_check_costs_the_same_however_many_responses_the_file_holds(tmp_path: Path) -> None:
    """The check every EVICTION_CHECK_EVERY-th put does: counted in SQLite VM steps, which do not depend
    on the machine's speed. A sum over the table took steps in proportion to its rows."""

    def steps_of_a_check(db: sqlite3.Connection, store: DiskStore) -> int:
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        db.set_progress_handler(count, 1)
        try:
            store._evict(db)
        finally:
            db.set_progress_handler(None, 1)
        return steps

    store = DiskStore(tmp_path, ttl=None, max_bytes=10**9)
    try:
        await store._run(
            lambda db: db.executemany(
                "INSERT INTO responses (key, body, size, created, used) VALUES (?, x'00', 1, 0, 0)",
                [(f"k{n}",) for n in range(50)],
            )
        )
        few = await store._run(lambda db: steps_of_a_check(db, store))
        await store._run(
            lambda db: db.executemany(
                "INSERT INTO responses (key, body, size, created, used) VALUES (?, x'00', 1, 0, 0)",
                [(f"more{n}",) for n in range(20_000)],
            )
        )
        many = await store._run(lambda db: steps_of_a_check(db, store))
        assert many <= few + 10, (few, many)
        assert _total_and_sum(store) == (20_050, 20_050)
    finally:
        await store.close()


def _drift(store: DiskStore, by: int) -> None:
    """What an older llmqueue sharing the file does: its INSERT OR REPLACE fires no delete trigger."""
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE totals SET bytes = bytes + ?", (by,))


async def test_disk_clear_empties_at_once_and_starts_a_drifted_total_again(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, ttl=None, max_bytes=10**9)
    try:
        rows = [(f"k{n}",) for n in range(5000)]
        await store._run(
            lambda db: db.executemany(
                "INSERT INTO responses (key, body, size, created, used) VALUES (?, x'00', 3, 0, 0)", rows
            )
        )
        _drift(store, 10**6)
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        await store._run(lambda db: db.set_progress_handler(count, 100))
        assert await store.clear() == 5000
        await store._run(lambda db: db.set_progress_handler(None, 100))
        # In VM steps (hundreds): row by row, the delete trigger firing for each, took 1,900; at once
        # (the whole table dropped, the total set to 0) under 10.
        assert steps < 50, steps
        assert _total_and_sum(store) == (0, 0)
        await store.put("after", ANSWER)  # the trigger is back: the total follows writes again
        await store._run(lambda db: db.execute("DELETE FROM responses WHERE key = 'after'"))
        assert _total_and_sum(store) == (0, 0)
    finally:
        await store.close()


async def test_disk_eviction_finds_a_drifted_total_and_keeps_what_fits(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, ttl=None, max_bytes=1000)
    try:
        await store.put("k0", ANSWER)
        await store.put("k1", answer("one"))
        _drift(store, 10**6)
        await store._run(store._evict)  # over only by the drift: the total is summed again, none goes
        assert await store.get("k0") is not None and await store.get("k1") is not None
        total, summed = _total_and_sum(store)
        assert total == summed > 0
        _drift(store, 10**6)
        await store.put("big", {"text": "x" * 900})  # now truly over: the least recently used go
        await store._run(store._evict)
        total, summed = _total_and_sum(store)
        assert total == summed <= 1000
        assert (await store.stats()).entries == 2  # one answer went, not all three
    finally:
        await store.close()


def test_a_cache_file_from_before_the_running_total_gets_it_when_opened(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute(
            "CREATE TABLE responses (key TEXT PRIMARY KEY, body BLOB NOT NULL, size INTEGER NOT NULL, "
            "created REAL NOT NULL, used REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0)"
        )
        db.executemany("INSERT INTO responses VALUES (?, x'00', ?, 0, 0, 0)", [("a", 100), ("b", 250)])
    store = DiskStore(tmp_path, ttl=None, max_bytes=300)
    try:
        assert _total_and_sum(store) == (350, 350)
        asyncio.run(store._run(store._evict))  # over 300 bytes: the older goes
        assert _total_and_sum(store) == (250, 250)
    finally:
        asyncio.run(store.close())


def test_a_cache_file_already_made_opens_while_another_process_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a file that has the schema takes no write lock: a worker starting while others store
    answers does not queue behind them (nor fail once the busy timeout has passed)."""
    asyncio.run(DiskStore(tmp_path, ttl=None, max_bytes=1000).close())
    monkeypatch.setattr(disk, "BUSY_TIMEOUT", 0.5)
    writer = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
        store = DiskStore(tmp_path, ttl=None, max_bytes=1000)
        asyncio.run(store.close())
    finally:
        writer.execute("ROLLBACK")
        writer.close()


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
