"""Reading the worker registry: which workers are alive, where, and how busy.

Each worker's heartbeat (``llmqueue.queue.heartbeat``) refreshes a hash ``keys.worker(worker_id)`` every
``heartbeat_interval`` seconds with its host, pid, queue, in-flight job count, start time and
``last_seen`` (the worker's clock, Unix seconds), and its job counts (``llmqueue.ops.counters``); the
hash expires after at least three intervals without a beat, and a worker that stops cleanly deletes
it. Before that, from before its LiteLLM import to its first beat, a worker has a starting mark
(``keys.worker_starting``), so that "no worker" is not said of one on its way up. This module only
reads those entries.

arq keeps one more sign of life: ``<queue>:health-check``, a string a worker on that queue rewrites
every ``health_check_interval`` seconds (``arq --check`` reads it; llmqueue's worker writes its own
counts in it, arq's own worker arq's). It is one key per queue, shared by every worker on it, so it
cannot tell which worker is alive; :func:`arq_health` returns it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from arq.constants import health_check_key_suffix
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.ops.counters import JobCounts
from llmqueue.queue.heartbeat import STARTING_TTL

__all__ = [
    "StartingWorker",
    "WorkerInfo",
    "WorkerLook",
    "arq_health",
    "live_workers",
    "look_for_workers",
    "no_worker_reason",
    "read_starting",
    "read_workers",
]

logger = logging.getLogger("llmqueue.ops.registry")


@dataclass(frozen=True)
class WorkerInfo:
    """One registry entry. Times are Unix seconds from the worker's clock."""

    worker_id: str
    host: str
    pid: int
    queue: str
    in_flight: int
    started_at: float
    last_seen: float
    jobs: JobCounts = field(default_factory=JobCounts)
    """What the worker's jobs did since it started (none from a worker of an older llmqueue)."""
    version: str | None = None
    """The llmqueue version the worker runs, when its heartbeat records it (``version`` in the hash)."""

    @classmethod
    def from_hash(cls, data: Mapping[Any, Any]) -> WorkerInfo:
        """Parse a registry hash (bytes or str values); raises ValueError/KeyError on a malformed one."""
        fields = {_text(k): _text(v) for k, v in data.items()}
        return cls(
            worker_id=fields["worker_id"],
            host=fields["host"],
            pid=int(fields["pid"]),
            queue=fields["queue"],
            in_flight=int(fields["in_flight"]),
            started_at=float(fields["started_at"]),
            last_seen=float(fields["last_seen"]),
            jobs=JobCounts.from_fields(fields),
            version=fields.get("version"),
        )

    def age(self, now: float) -> float:
        """Seconds since the worker's last heartbeat."""
        return max(0.0, now - self.last_seen)

    def to_json(self, now: float) -> dict[str, Any]:
        return {**asdict(self), "age": round(self.age(now), 3), "uptime": round(now - self.started_at, 3)}


async def read_workers(redis: Redis) -> list[WorkerInfo]:
    """Every registry entry present now, sorted by host and pid; malformed entries are logged, skipped."""
    entry_keys = [key async for key in redis.scan_iter(match=keys.WORKER_PATTERN, count=500)]
    if not entry_keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in entry_keys:
            pipe.hgetall(key)
        hashes: list[Mapping[Any, Any]] = await pipe.execute()
    workers = []
    for key, data in zip(entry_keys, hashes, strict=True):
        if not data:
            continue  # expired between SCAN and HGETALL
        try:
            workers.append(WorkerInfo.from_hash(data))
        except (KeyError, ValueError) as exc:
            logger.warning("skipping malformed worker registry entry %s: %r", _text(key), exc)
    return sorted(workers, key=lambda w: (w.host, w.pid, w.worker_id))


def live_workers(
    workers: Iterable[WorkerInfo],
    *,
    max_age: float,
    now: float | None = None,
    queue: str | None = None,
    host: str | None = None,
) -> list[WorkerInfo]:
    """The workers whose last heartbeat is at most ``max_age`` seconds old, optionally on one queue/host."""
    now = time.time() if now is None else now
    return [
        w
        for w in workers
        if w.age(now) <= max_age and (queue is None or w.queue == queue) and (host is None or w.host == host)
    ]


NO_WORKER = "no llmqueue worker"
"""How :func:`no_worker_reason`'s answers begin (a caller that knows its workers are starting says so
instead)."""
STARTING_PATIENCE = 60.0
"""Seconds a worker may take to come up (LiteLLM's import, seconds of CPU) before "no worker" is said."""


@dataclass(frozen=True)
class StartingWorker:
    """A worker process on its way up (``keys.worker_starting``): not in the registry yet."""

    host: str
    pid: int
    queue: str
    since: float
    """When it started, in Unix seconds on the reader's clock (from the mark's time to live)."""


async def read_starting(redis: Redis, now: float | None = None) -> list[StartingWorker]:
    """The workers starting now, oldest first; malformed marks are skipped. A mark's age is read from
    its time to live (Redis's clock), not from the clock of the machine that wrote it."""
    now = time.time() if now is None else now
    mark_keys = [key async for key in redis.scan_iter(match=keys.STARTING_PATTERN, count=500)]
    if not mark_keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in mark_keys:
            pipe.get(key)
            pipe.pttl(key)
        answers = await pipe.execute()
    found = []
    for raw, ttl_ms in zip(answers[::2], answers[1::2], strict=True):
        try:
            data = json.loads(raw)
            age = STARTING_TTL - ttl_ms / 1000 if ttl_ms >= 0 else 0.0
            found.append(StartingWorker(str(data["host"]), int(data["pid"]), str(data["queue"]), now - age))
        except (TypeError, ValueError, KeyError):
            continue  # expired between SCAN and GET, or not ours
    return sorted(found, key=lambda worker: worker.since)


@dataclass(frozen=True)
class WorkerLook:
    """What a look for the workers of a queue found."""

    reason: str | None
    """Why nothing will run jobs on the queue now, or None: a worker is up, or one is starting."""
    wait_more: float | None = None
    """When a worker is starting and none is up: seconds until its patience runs out (look again then)."""


async def look_for_workers(
    redis: Redis,
    queue: str,
    *,
    heartbeat_interval: float,
    patience: float = STARTING_PATIENCE,
    now: float | None = None,
) -> WorkerLook:
    """Whether a worker is up on ``queue`` (a heartbeat within three intervals), else whether one has
    been starting for less than ``patience`` seconds (no reason given yet), else why none will run jobs.
    The reason's words change only with what it says (a caller says each reason once)."""
    now = time.time() if now is None else now
    alive = live_workers(await read_workers(redis), max_age=3 * heartbeat_interval, queue=queue, now=now)
    if alive:
        return WorkerLook(None)
    starting = [worker for worker in await read_starting(redis, now) if worker.queue == queue]
    if not starting:
        return WorkerLook(f"{NO_WORKER} is running on queue {queue}: start one with `llmqueue worker`")
    latest = starting[-1]
    if now - latest.since < patience:
        return WorkerLook(None, wait_more=patience - (now - latest.since))
    at = time.strftime("%H:%M:%S", time.localtime(latest.since))
    return WorkerLook(
        f"{NO_WORKER} is up on queue {queue}: {len(starting)} started but none has come up (the latest: "
        f"pid {latest.pid} on {latest.host}, started at {at}); see its log"
    )


async def no_worker_reason(
    redis: Redis,
    queue: str,
    *,
    heartbeat_interval: float,
    patience: float = STARTING_PATIENCE,
    now: float | None = None,
) -> str | None:
    """:func:`look_for_workers`' reason: None when a worker is up, or starting within ``patience``."""
    look = await look_for_workers(
        redis, queue, heartbeat_interval=heartbeat_interval, patience=patience, now=now
    )
    return look.reason


async def arq_health(redis: Redis, queue_name: str) -> str | None:
    """The health-check line of ``queue_name`` (``succeeded=… queued=…``), or None when absent."""
    value = await redis.get(queue_name + health_check_key_suffix)
    return None if value is None else _text(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
