"""A job's stream in Redis: deltas coalesced by the writer, read back in order, restarts seen, resumable."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.queue.job_stream import FLUSH_CHARS, StreamEvent, StreamWriter, read_stream


async def always_finished() -> bool:
    return True


async def read_all(redis: Redis, job_id: str, after: str = "0") -> list[StreamEvent]:
    return [event async for event in read_stream(redis, job_id, after=after, finished=always_finished)]


async def test_deltas_written_close_together_are_coalesced_into_few_entries(redis: Redis) -> None:
    writer = StreamWriter(redis, "job-1", ttl=60)
    await writer.begin()
    for word in ["a", "b", "c", "d", "e"]:
        await writer.add(word)
    await writer.end()
    events = await read_all(redis, "job-1")
    assert "".join(e.text for e in events) == "abcde"
    assert len(events) == 2  # the first at once, the rest together
    assert 0 < await redis.ttl(keys.job_stream("job-1")) <= 60


async def test_a_long_delta_is_written_at_once(redis: Redis) -> None:
    writer = StreamWriter(redis, "job-2", ttl=60)
    await writer.add("x")
    await writer.add("y" * FLUSH_CHARS)
    assert await redis.xlen(keys.job_stream("job-2")) == 2
    await writer.end()


async def test_deltas_are_written_within_the_flush_interval_without_a_further_delta(redis: Redis) -> None:
    writer = StreamWriter(redis, "job-3", ttl=60)
    await writer.add("first")
    await writer.add("second")
    assert await redis.xlen(keys.job_stream("job-3")) == 1
    await asyncio.sleep(0.15)
    assert await redis.xlen(keys.job_stream("job-3")) == 2
    await writer.end()


async def test_a_new_attempt_after_a_cut_stream_emits_a_restart_the_reader_sees(redis: Redis) -> None:
    cut = StreamWriter(redis, "job-4", ttl=60)
    await cut.begin()
    await cut.add("half an ans")
    await cut.abandon()  # a 429 mid-way: the job is retried
    again = StreamWriter(redis, "job-4", ttl=60)
    await again.begin()
    await again.add("the whole answer")
    await again.end()
    events = await read_all(redis, "job-4")
    assert [(e.kind, e.text) for e in events] == [
        ("delta", "half an ans"),
        ("restart", ""),
        ("delta", "the whole answer"),
    ]


async def test_reading_resumes_after_the_last_id_seen(redis: Redis) -> None:
    writer = StreamWriter(redis, "job-5", ttl=60)
    await writer.add("one ")
    await writer.flush()
    await writer.add("two")
    await writer.end()
    first, *_ = await read_all(redis, "job-5")
    rest = await read_all(redis, "job-5", after=first.id)
    assert first.text == "one " and [e.text for e in rest] == ["two"]


async def test_a_job_that_never_streams_ends_the_reader_once_it_has_a_result(redis: Redis) -> None:
    assert await asyncio.wait_for(read_all(redis, "job-never"), timeout=5) == []


async def test_a_redis_that_refuses_writes_ends_the_stream_not_the_call() -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        writer = StreamWriter(unreachable, "job-6", ttl=60)
        await writer.begin()
        await writer.add("paid for")
        await writer.end()
        assert writer.refused
    finally:
        await unreachable.aclose()
