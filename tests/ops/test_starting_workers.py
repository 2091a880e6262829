"""A worker on its way up (LiteLLM's import: seconds of CPU) is not reported as "no worker": it marks
itself starting before the import, its first heartbeat clears the mark, and "no worker" is said only
when none is up or starting, or one has been starting for longer than ``STARTING_PATIENCE``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.ops.registry import STARTING_PATIENCE, no_worker_reason, read_starting
from llmqueue.queue.heartbeat import Heartbeat, mark_starting
from tests.support.reliability import worker_env, worker_processes
from tests.support.settings import TEST_API_KEY

QUEUE = "llmqueue:queue"


async def mark(redis: Redis, host: str, pid: int, queue: str, since: float) -> None:
    await redis.set(keys.worker_starting(host, pid), json.dumps({"queue": queue, "since": since}))


async def test_no_worker_is_said_only_when_none_is_up_or_starting_within_the_patience(redis: Redis) -> None:
    now = time.time()
    said = await no_worker_reason(redis, QUEUE, heartbeat_interval=5, now=now)
    assert said is not None and "no llmqueue worker is running on queue llmqueue:queue" in said

    await mark(redis, "elsewhere", 7, "other:queue", now - 1)  # another queue's worker does not count
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5, now=now) == said

    await mark(redis, "box", 41, QUEUE, now - 12)
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5, now=now) is None

    later = now - 12 + STARTING_PATIENCE + 3  # it never came up
    said = await no_worker_reason(redis, QUEUE, heartbeat_interval=5, now=later)
    assert said is not None and "1 started but not up after 63 s (the latest: pid 41 on box)" in said

    await redis.set(keys.worker_starting("box", 42), b"not json")  # skipped, not a crash
    assert [w.pid for w in await read_starting(redis)] == [41, 7]  # oldest first


async def test_the_first_heartbeat_clears_the_workers_starting_mark(redis: Redis) -> None:
    await mark_starting(redis, QUEUE)
    here = keys.worker_starting(socket.gethostname(), os.getpid())
    assert 0 < await redis.ttl(here) <= 300
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5) is None

    beat = Heartbeat(redis, worker_id="w1", queue_name=QUEUE, in_flight=set, interval=5, ttl=10)
    await beat.beat()
    assert not await redis.exists(here)
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5) is None  # it is up now
    await beat.stop()
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5) is not None


async def test_a_real_worker_is_marked_starting_before_it_registers(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    env = worker_env(redis_url, "http://127.0.0.1:9", TEST_API_KEY)
    with worker_processes(env, tmp_path) as workers:
        (worker,) = workers.start(1)
        seen: set[str] = set()
        deadline = time.monotonic() + 90
        while "registered" not in seen and time.monotonic() < deadline:
            if [w for w in await read_starting(redis) if w.pid == worker.pid and w.queue == QUEUE]:
                seen.add("starting")
                assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5) is None
            if [key async for key in redis.scan_iter(match=keys.WORKER_PATTERN)]:
                seen.add("registered")
            await asyncio.sleep(0.05)
        assert seen == {"starting", "registered"}, worker.stderr()[-2000:]
        assert await read_starting(redis) == []
