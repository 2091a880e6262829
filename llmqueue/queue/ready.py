"""The ready queue: which job a worker takes next, and where a job goes when its run ends.

arq's sorted set keeps every unfinished job scored by when it is due, as arq expects (its tooling,
``Job.status()`` and its CLI worker keep working). Beside it, jobs that are due wait in lanes: one per
priority and batch (``keys.ready_prefix``). A worker claims many jobs in one script call:

- the highest priority first (``Job.priority``, 0-9);
- within a priority, batches take turns: the lane with the lowest virtual time is served, and each
  job served adds ``1/weight`` to it, so two batches progress together in the ratio of their weights
  and a batch that arrives later starts at once instead of waiting for the first to drain;
- within a batch, enqueue (input) order. A deferred or retried job keeps its priority and place.

Crash recovery is arq's: a claimed job carries arq's in-progress key, which the heartbeat renews.
Once a second, a claim also sweeps the claimed jobs whose key has expired (their worker died) back
into their lanes, and checks the next slice of arq's queue for jobs that are in no lane (queued by an
older llmqueue or by arq itself), so nothing in arq's queue is ever stranded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from arq.constants import result_key_prefix
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from llmqueue import keys
from llmqueue.models import MAX_PRIORITY, PRIORITIES
from llmqueue.queue import ledger
from llmqueue.queue.scripts import now_ms, script
from llmqueue.queue.store import AttemptStart

SWEEP_INTERVAL_MS = 1000
RECONCILE_CHUNK = 200
LOW_PRIORITY_BELOW = PRIORITIES["default"]
"""Jobs below this priority (``batch``) may not take a worker's reserved slots."""

ReleaseMode = Literal["finish", "defer", "back"]


@dataclass(frozen=True)
class Claimed:
    job_id: str
    score: int
    """arq's score of the job when it was claimed (ms): when it was due; a deferral counts from now."""
    priority: int
    start: AttemptStart
    """The job's state as it starts (what ``JobStore.begin_attempt`` reads), read by the claim."""
    payload: bytes | None
    """arq's job payload (None: it expired)."""
    job_try: int
    """arq's count of this job's starts, this one included (the claim counts it in arq's retry key, as
    arq's own worker does, so arq's ``Job.info()`` stays right)."""
    aborted: bool
    """The job was in arq's abort set (the claim took it out, as arq's worker does; llmqueue's loop, like
    arq's by default, does not abort jobs)."""


@dataclass(frozen=True)
class PriorityCounts:
    priority: int
    ready: int
    deferred: int
    running: int


class ReadyQueue:
    """Claims and releases one queue's jobs (the worker's side; producers enqueue through JobStore)."""

    def __init__(self, redis: Redis, queue_name: str, *, claim_ttl: float, state_ttl: float = 86400) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.state_ttl = int(state_ttl)
        self.prefix = keys.ready_prefix(queue_name)
        self.claim_ttl_ms = int(claim_ttl * 1000)
        self._claim = redis.register_script(script("claim.lua"))
        self._release = redis.register_script(script("release.lua"))
        self._wake = redis.register_script(script("wake.lua"))

    def _head(self) -> list[str | int]:
        return [self.prefix, self.queue_name, now_ms()]

    async def claim(self, count: int, *, low_priority_limit: int) -> list[Claimed]:
        """Claim up to ``count`` ready jobs, of which at most ``low_priority_limit`` of ``batch`` priority."""
        if count <= 0:
            return []
        reply = await self._claim(
            args=[
                *self._head(),
                count,
                max(0, low_priority_limit),
                LOW_PRIORITY_BELOW,
                self.claim_ttl_ms,
                SWEEP_INTERVAL_MS,
                RECONCILE_CHUNK,
                keys.result(""),
                keys.state(""),
                keys.attempt_errors(""),
                keys.batch(""),
                datetime.now(UTC).isoformat(),
                self.state_ttl,
                keys.arq_retry(""),
                keys.ARQ_ABORT,
                keys.paused_scopes(),
                *ledger.GATE_FIELDS,
            ]
        )
        return [
            Claimed(
                job_id=reply[i].decode(),
                score=int(float(reply[i + 1])),
                priority=int(reply[i + 2]),
                start=_attempt_start(reply[i + 3]),
                payload=reply[i + 4],
                job_try=int(reply[i + 5]),
                aborted=bool(reply[i + 6]),
            )
            for i in range(0, len(reply), 7)
        ]

    async def release(
        self,
        job_id: str,
        mode: ReleaseMode,
        *,
        defer_ms: int = 0,
        arq_result: bytes | None = None,
        arq_result_ttl_ms: int | None = None,
    ) -> None:
        """End a claimed job's run: ``finish`` it, ``defer`` it by ``defer_ms``, or put it ``back`` as due."""
        await self._release(
            args=[
                *self._head(),
                job_id,
                mode,
                defer_ms,
                arq_result or b"",
                "" if arq_result_ttl_ms is None else arq_result_ttl_ms,
                keys.arq_retry(""),
                result_key_prefix,
                keys.ARQ_ABORT,
            ]
        )

    async def wake(self, jobs: Sequence[tuple[str, float]]) -> None:
        """Bring waiting jobs forward: each to ``delay`` seconds from now, if it is due later than that
        (the limiter found room for them sooner than it told them)."""
        if jobs:
            now = now_ms()
            pairs = [value for job, delay in jobs for value in (job, now + max(0, int(delay * 1000)))]
            await self._wake(args=[*self._head(), *pairs])

    async def counts(self) -> list[PriorityCounts]:
        """Jobs ready, deferred and running at each priority that has any (highest first)."""
        ready = [0] * (MAX_PRIORITY + 1)
        lane_names: list[tuple[int, list[bytes]]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for priority in range(MAX_PRIORITY + 1):
                pipe.zrange(keys.lanes(self.queue_name, priority), 0, -1)
            replies = await pipe.execute()
        lane_names = list(enumerate(replies))
        async with self.redis.pipeline(transaction=False) as pipe:
            for priority, names in lane_names:
                for name in names:
                    pipe.zcard(keys.lane(self.queue_name, priority, name.decode()))
            sizes = iter(await pipe.execute())
        for priority, names in lane_names:
            ready[priority] = sum(next(sizes) for _ in names)
        deferred = await self._priorities_of(keys.delayed(self.queue_name))
        running = await self._priorities_of(keys.claimed(self.queue_name))
        return [
            PriorityCounts(priority=p, ready=ready[p], deferred=deferred[p], running=running[p])
            for p in range(MAX_PRIORITY, -1, -1)
            if ready[p] or deferred[p] or running[p]
        ]

    async def _priorities_of(self, key: str) -> list[int]:
        found = [0] * (MAX_PRIORITY + 1)
        start, chunk = 0, 5000
        while True:
            members = await self.redis.zrange(key, start, start + chunk - 1)
            if not members:
                return found
            for route in await self.redis.hmget(keys.routes(self.queue_name), members):
                if route:
                    found[int(route[:1])] += 1
            start += chunk


def _attempt_start(reply: list[object]) -> AttemptStart:
    has_result, fields, errors, gate, paused = reply
    assert isinstance(fields, list) and isinstance(errors, list) and isinstance(gate, list)
    assert isinstance(paused, list)
    return AttemptStart.from_replies(bool(has_result), fields, errors, gate or None, paused)


def set_weight(pipe: Pipeline, queue_name: str, lane: str, weight: float) -> None:
    """Give a batch (lane) ``weight`` times the share of a batch of weight 1 at the same priority."""
    if weight == 1:
        pipe.hdel(keys.weights(queue_name), lane)
    else:
        pipe.hset(keys.weights(queue_name), lane, weight)


__all__: Sequence[str] = ["Claimed", "PriorityCounts", "ReadyQueue", "set_weight"]
