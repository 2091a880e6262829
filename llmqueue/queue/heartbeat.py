"""A worker's heartbeat: it keeps its running jobs claimed and itself listed as alive.

arq claims a running job with an in-progress key that lives for the job timeout + 10 s, and has no
heartbeat: a job held by a worker that died waits out that whole time. llmqueue shortens the key to
``in_progress_ttl`` and refreshes it every ``heartbeat_interval`` while the job runs, so a dead
worker's jobs run again within seconds, while a slow call that is still running is never run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.ops.tasks import cancel_and_wait
from llmqueue.redaction import redis_error_line

logger = logging.getLogger("llmqueue.worker")


STARTING_TTL = 300
"""Seconds a worker's starting mark lives if the worker never comes up (LiteLLM's import on a loaded
machine can take tens of seconds; a crashed start must not be announced for ever)."""

_starting_mark: str | None = None
"""This process's starting mark while it has one: set by :func:`mark_starting`, ended by the first
beat or by :func:`clear_starting`."""


async def mark_starting(redis: Redis, queue_name: str) -> None:
    """Say this process is a worker on its way up on ``queue_name`` (``keys.worker_starting``), so that
    a producer waiting on the queue does not report "no worker" while it imports; its first
    :meth:`Heartbeat.beat` removes the mark."""
    global _starting_mark
    host, pid = socket.gethostname(), os.getpid()
    key = keys.worker_starting(f"{host}:{pid}:{uuid.uuid4().hex[:6]}")  # pid 1 in many containers
    _starting_mark = key  # first: stopped while the SET is on its way, the process still removes it
    await redis.set(key, json.dumps({"host": host, "pid": pid, "queue": queue_name}), ex=STARTING_TTL)


def starting_mark() -> str | None:
    """This process's starting mark, while it has one (the key)."""
    return _starting_mark


async def clear_starting(redis: Redis) -> None:
    """Remove this process's starting mark, if it still has one: it ends without having come up (its
    first beat removes it otherwise), so waits on the queue are told "no worker" again at once."""
    mark = _starting_mark
    if mark is not None:
        await redis.delete(mark)
        _mark_gone(mark)


def _mark_gone(mark: str) -> None:
    global _starting_mark
    if _starting_mark == mark:
        _starting_mark = None


class Heartbeat:
    """Every ``interval`` seconds: re-claim ``in_flight()`` jobs for ``ttl`` seconds, and list the worker
    with the fields ``counts()`` returns (its job counts)."""

    def __init__(
        self,
        redis: Redis,
        *,
        worker_id: str,
        queue_name: str,
        in_flight: Callable[[], set[str]],
        interval: float,
        ttl: float,
        counts: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.queue_name = queue_name
        self.in_flight = in_flight
        self.interval = interval
        self.ttl_ms = int(ttl * 1000)
        self.counts = counts
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(keys.worker(self.worker_id))

    async def beat(self) -> None:
        """One beat: shorten/refresh every running job's claim and refresh the registry entry."""
        jobs = sorted(self.in_flight())
        entry = keys.worker(self.worker_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in jobs:
                pipe.pexpire(keys.arq_in_progress(job_id), self.ttl_ms)
            pipe.hset(
                entry,
                mapping={
                    "worker_id": self.worker_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "queue": self.queue_name,
                    "in_flight": len(jobs),
                    "started_at": self.started_at,
                    "last_seen": time.time(),
                    **self.counts(),
                },
            )
            pipe.pexpire(entry, max(self.ttl_ms, int(3 * self.interval * 1000)))
            mark = _starting_mark
            if mark is not None:
                pipe.delete(mark)
            await pipe.execute()
        if mark is not None:
            _mark_gone(mark)

    async def _beat_forever(self) -> None:
        failing: str | None = None  # said once per outage, not every beat
        while True:
            try:
                await self.beat()
                failing = None
            except (RedisError, OSError) as exc:
                if type(exc).__name__ != failing:
                    line = redis_error_line(exc)
                    logger.warning("heartbeat failed (%s); retrying every %.0fs", line, self.interval)
                    failing = type(exc).__name__
            await asyncio.sleep(self.interval)
