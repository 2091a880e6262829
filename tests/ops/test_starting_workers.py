"""A worker on its way up (LiteLLM's import: seconds of CPU) is not reported as "no worker": it marks
itself starting before the import, its first heartbeat clears the mark, and "no worker" is said only
when none is up or starting, or one has been starting for longer than ``STARTING_PATIENCE``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches import follow as follow_module
from llmqueue.batches.control import Batches
from llmqueue.errors import ConfigError, ResultTimeoutError
from llmqueue.ops import preflight
from llmqueue.ops.registry import (
    NO_WORKER,
    STARTING_PATIENCE,
    WorkerLook,
    look_for_workers,
    no_worker_reason,
    read_starting,
)
from llmqueue.producer import NO_WORKER_NOTICE, Producer
from llmqueue.queue import heartbeat
from llmqueue.queue.heartbeat import STARTING_TTL, Heartbeat, mark_starting
from llmqueue.queue.store import JobStore
from tests.support.reliability import worker_env, worker_processes
from tests.support.settings import TEST_API_KEY

QUEUE = "llmqueue:queue"


async def mark(redis: Redis, host: str, pid: int, queue: str, age: float) -> None:
    """A starting mark written ``age`` seconds ago (its time to live tells its age)."""
    mark = json.dumps({"host": host, "pid": pid, "queue": queue})
    await redis.set(keys.worker_starting(f"{host}:{pid}:t"), mark, px=int((STARTING_TTL - age) * 1000))


async def test_no_worker_is_said_only_when_none_is_up_or_starting_within_the_patience(redis: Redis) -> None:
    now = time.time()
    said = await no_worker_reason(redis, QUEUE, heartbeat_interval=5, now=now)
    assert said is not None and "no llmqueue worker is running on queue llmqueue:queue" in said

    await mark(redis, "elsewhere", 7, "other:queue", 1)  # another queue's worker does not count
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5, now=now) == said

    await mark(redis, "box", 41, QUEUE, 12)
    assert await look_for_workers(redis, QUEUE, heartbeat_interval=5, now=now) == WorkerLook(
        None, wait_more=pytest.approx(STARTING_PATIENCE - 12, abs=0.5)
    )
    # `run` is told at once that its own workers are not up yet.
    soon = await no_worker_reason(redis, QUEUE, heartbeat_interval=5, patience=0, now=now)
    assert soon is not None and soon.startswith(NO_WORKER)

    await mark(redis, "box", 41, QUEUE, STARTING_PATIENCE + 3)  # it never came up
    said = await no_worker_reason(redis, QUEUE, heartbeat_interval=5)
    assert said is not None and "1 started but none has come up (the latest: pid 41 on box" in said
    # The words stay the same as time goes on: a wait says them once, not at every look.
    await asyncio.sleep(1.1)
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5) == said

    await redis.set(keys.worker_starting("box:42:t"), b"not json")  # skipped, not a crash
    assert [w.pid for w in await read_starting(redis)] == [41, 7]  # oldest first


async def test_a_producer_waiting_on_a_worker_that_never_comes_up_says_so_once_its_patience_ran_out(
    redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmqueue.producer")
    began = time.time()
    await mark(redis, "box", 41, QUEUE, STARTING_PATIENCE - NO_WORKER_NOTICE - 1.5)
    async with Producer(redis_url=redis_url) as producer:
        handle = await producer.submit({"messages": [{"role": "user", "content": "Hallo"}]})
        with pytest.raises(ResultTimeoutError):
            await handle.result(timeout=2 * NO_WORKER_NOTICE + 5)
    notices = [r for r in caplog.records if "is waiting" in r.getMessage()]
    assert len(notices) == 1, [r.getMessage() for r in notices]
    assert "1 started but none has come up (the latest: pid 41 on box" in notices[0].getMessage()
    # Not at the first look (3 s in, the worker 58.5 s into its start), but once its 60 s were out.
    assert notices[0].created - began >= NO_WORKER_NOTICE + 1.5


async def test_the_first_heartbeat_clears_the_workers_starting_mark(redis: Redis) -> None:
    await mark_starting(redis, QUEUE)
    here = heartbeat.starting_mark()
    assert here is not None and 0 < await redis.ttl(here) <= STARTING_TTL
    (starting,) = await read_starting(redis)
    assert (starting.host, starting.pid, starting.queue) == (socket.gethostname(), os.getpid(), QUEUE)
    assert await no_worker_reason(redis, QUEUE, heartbeat_interval=5) is None

    beat = Heartbeat(redis, worker_id="w1", queue_name=QUEUE, in_flight=set, interval=5, ttl=10)
    await beat.beat()
    assert not await redis.exists(here) and heartbeat.starting_mark() is None
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


def test_a_worker_that_fails_to_start_takes_its_starting_mark_away(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import llmqueue.worker as worker_module
    from llmqueue.cli import app

    marks: list[str] = []
    real_mark = heartbeat.mark_starting

    async def marked(client: Redis, queue: str) -> None:
        await real_mark(client, queue)
        marks.extend(key.decode() for key in await client.keys(keys.STARTING_PATTERN))

    def broken(*args: object, **kwargs: object) -> None:
        raise ConfigError("the worker could not start")  # as a failed import or a bad setting would

    monkeypatch.setattr(preflight, "mark_starting", marked)
    monkeypatch.setattr(worker_module, "create_worker", broken)
    done = CliRunner().invoke(app, ["worker", "--redis-url", redis_url])

    assert isinstance(done.exception, ConfigError), done.output
    assert len(marks) == 1 and f":{socket.gethostname()}:{os.getpid()}:" in marks[0]  # it was marked
    with SyncRedis.from_url(redis_url) as client:
        assert client.keys(keys.STARTING_PATTERN) == []


async def test_following_a_batch_tells_of_a_starting_worker_only_past_the_patience_it_is_given(
    redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow_module, "STALL_CHECK_SECONDS", 0.2)
    source = tmp_path / "b.jsonl"
    source.write_text(json.dumps({"custom_id": "c1", "messages": [{"role": "user", "content": "q"}]}) + "\n")
    batches = Batches(JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600))
    await batches.submit_file(source, "b", default_model="openai/sim", cache=False)
    await mark(redis, "box", 41, QUEUE, 0)

    async def stalls(patience: float) -> list[str]:
        """What following the batch for 1.5 s (a stall looked into every 0.2 s) tells of."""
        told: list[str] = []
        deadline = time.monotonic() + 1.5
        async for _ in batches.follow("b", interval=0.05, on_stall=told.append, starting_patience=patience):
            if told or time.monotonic() > deadline:
                break
        return told

    assert await stalls(STARTING_PATIENCE) == []  # a `results --wait`: the worker is coming
    told = await stalls(0)  # `llmqueue run`, which says its own workers are starting
    assert len(told) == 1 and told[0].startswith(NO_WORKER), told


async def test_llmqueue_workers_lists_the_workers_still_starting(redis: Redis, redis_url: str) -> None:
    from typer.testing import CliRunner

    from llmqueue.cli import app

    await mark(redis, "box", 41, QUEUE, 7)
    await mark(redis, "elsewhere", 7, "other:queue", 0)
    listing = await asyncio.to_thread(
        CliRunner().invoke, app, ["workers", "--queue", QUEUE, "--redis-url", redis_url]
    )

    assert listing.exit_code == 0, listing.output
    assert re.search(r"starting: pid 41 on box, queue llmqueue:queue, for [78]s", listing.output)
    assert "pid 7 " not in listing.output and "no live workers" in listing.output


async def test_a_worker_stopped_while_it_starts_takes_its_starting_mark_away(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # As `llmqueue run` refusing a file stops its first worker, or a pod scaled down mid-start.
    env = worker_env(redis_url, "http://127.0.0.1:9", TEST_API_KEY)
    with worker_processes(env, tmp_path) as workers:
        (worker,) = workers.start(1)
        deadline = time.monotonic() + 60
        while not [w for w in await read_starting(redis) if w.pid == worker.pid]:
            assert time.monotonic() < deadline and worker.alive, worker.stderr()[-2000:]
            await asyncio.sleep(0.02)
        assert not [key async for key in redis.scan_iter(match=keys.WORKER_PATTERN)]  # still importing
        worker.process.terminate()
        worker.process.send_signal(signal.SIGINT)  # as `run` stops its workers: both signals at once
        await asyncio.to_thread(worker.process.wait, 30)
        assert await read_starting(redis) == [], worker.stderr()[-2000:]
