"""A batch's bookkeeping in Redis: its counters, the gate that stops new starts, and the budget rule.

A batch is a hash (``keys.batch``) of settings (``max_cost``, ``max_tokens``, ``source``, ``created_at``,
``total``) and running totals. Outcomes (``succeeded``/``failed``/``cancelled``, ``cached``, tokens,
cost) are added
by the job store's finish script, atomically with the result; the in-between counts (``running``,
``retry_waiting``, ``requests``, ``rate_limited``) are kept by the methods here. Before each start a
worker reads the gate fields and asks :func:`stop_reason` whether the batch may start another job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from llmqueue import keys
from llmqueue.errors import BatchError

_COUNT_TOTAL = "return redis.call('HSET', KEYS[1], 'total', redis.call('ZCARD', KEYS[2]))"

GATE_FIELDS = ["cancel_requested", "max_cost", "cost", "max_tokens", "tokens", "paused"]


def budget_spent(*, cost: float, max_cost: float | None, tokens: int, max_tokens: int | None) -> bool:
    """The budget rule: a batch that spent ``max_cost`` USD or used ``max_tokens`` tokens starts no job."""
    return (max_cost is not None and cost >= max_cost) or (max_tokens is not None and tokens >= max_tokens)


def spent_caps(*, cost: float, max_cost: float | None, tokens: int, max_tokens: int | None) -> list[str]:
    """The options that raise the caps a batch has reached: ``--max-cost USD``, ``--max-tokens N``."""
    caps = ["--max-cost USD"] if max_cost is not None and cost >= max_cost else []
    return caps + (["--max-tokens N"] if max_tokens is not None and tokens >= max_tokens else [])


def stop_reason(fields: Sequence[bytes | None]) -> str | None:
    """Why no further job of a batch may start, from its :data:`GATE_FIELDS`; None when they may."""
    cancel, max_cost, cost, max_tokens, tokens = (None if f is None else f.decode() for f in fields[:5])
    if cancel:
        return "cancelled"
    spent = budget_spent(
        cost=float(cost or 0),
        max_cost=float(max_cost) if max_cost is not None else None,
        tokens=int(tokens or 0),
        max_tokens=int(max_tokens) if max_tokens is not None else None,
    )
    return "budget_exceeded" if spent else None


@dataclass
class BatchStatus:
    """A batch's counts and totals. ``queued`` is derived: total less every other state."""

    batch_id: str
    total: int
    queued: int
    running: int
    retry_waiting: int
    succeeded: int
    failed: int
    cancelled: int
    cached: int
    """Succeeded jobs answered from the response cache (no provider call)."""
    requests: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    cost: float
    max_cost: float | None
    max_tokens: int | None
    cancel_requested: bool
    created_at: float
    elapsed: float
    """Seconds since the batch was created; once every job has finished, until the last one did."""
    throughput: float
    """Finished jobs per second over ``elapsed``."""
    eta_seconds: float | None
    source: str | None
    deployments: dict[str, dict[str, int]] = field(default_factory=dict)
    """Provider calls per model_list deployment, by outcome (``ok``, ``rate_limit``, ``connection`` …)."""
    paused: bool = False
    """Paused (``llmqueue pause``): its queued jobs start no call until it is resumed."""

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def done(self) -> bool:
        return self.total > 0 and self.finished >= self.total

    @property
    def budget_exceeded(self) -> bool:
        return budget_spent(
            cost=self.cost, max_cost=self.max_cost, tokens=self.tokens, max_tokens=self.max_tokens
        )

    @property
    def caps_to_raise(self) -> list[str]:
        """The options that raise the caps this batch has reached (see :func:`spent_caps`)."""
        return spent_caps(
            cost=self.cost, max_cost=self.max_cost, tokens=self.tokens, max_tokens=self.max_tokens
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished, "done": self.done}


class BatchLedger:
    """Reads and updates the counters of batches in one Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def call_started(self, batch_id: str | None, *, retrying: bool) -> None:
        """Count a provider call starting (``running``, ``requests``; a retry leaves ``retry_waiting``)."""
        if batch_id is None:
            return
        await self._add_call(batch_id, 1, retrying)

    async def call_cut_short(self, batch_id: str | None, *, retrying: bool) -> None:
        """Undo :meth:`call_started` for a call a stopping worker cut short (the job runs again later)."""
        if batch_id is None:
            return
        await self._add_call(batch_id, -1, retrying)

    async def call_not_sent(self, batch_id: str | None) -> None:
        """Take back the request :meth:`call_started` counted for a call refused before it left."""
        if batch_id is None:
            return
        await self.redis.hincrby(keys.batch(batch_id), "requests", -1)

    @staticmethod
    def count_total(pipe: Pipeline, batch_id: str) -> None:
        """Queue on ``pipe``: the batch's ``total`` set to the number of jobs it lists (a write made
        again, as across a failover, counts nothing twice)."""
        pipe.eval(_COUNT_TOTAL, 2, keys.batch(batch_id), keys.batch_jobs(batch_id))

    @staticmethod
    def count_retry(pipe: Pipeline, batch_id: str, *, rate_limited: bool) -> None:
        """Queue on ``pipe``: a call failed and its job waits for a retry."""
        pipe.hincrby(keys.batch(batch_id), "running", -1)
        pipe.hincrby(keys.batch(batch_id), "retry_waiting", 1)
        if rate_limited:
            pipe.hincrby(keys.batch(batch_id), "rate_limited", 1)

    async def call_rerouted(self, batch_id: str | None, *, retrying: bool) -> None:
        """A call failed on a deployment that was taken out; the job waits for another (no attempt)."""
        if batch_id is None:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.batch(batch_id), "running", -1)
            if retrying:  # call_started took it out of retry_waiting; the next start will again
                pipe.hincrby(keys.batch(batch_id), "retry_waiting", 1)
            await pipe.execute()

    async def count_deployment_call(self, batch_id: str, deployment: str, outcome: str) -> None:
        """Count one ended call of a batch on a deployment: ``ok`` or the error kind."""
        await self.redis.hincrby(keys.batch_deployments(batch_id), f"{deployment}\t{outcome}", 1)

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's counts, usage, cost, throughput and ETA. Raises BatchError for an unknown batch."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.batch(batch_id))
            pipe.hgetall(keys.batch_deployments(batch_id))
            pipe.time()  # the clock of created_at and last_finished_at, whatever this host's says
            raw, per_deployment, (seconds, micros) = await pipe.execute()
        now = seconds + micros / 1e6
        if not raw:
            raise BatchError(f"no batch named {batch_id!r} in this Redis")
        fields = {k.decode(): v.decode() for k, v in raw.items()}

        def number(name: str) -> int:
            return int(float(fields.get(name, 0)))

        total, succeeded, failed, cancelled = (
            number("total"),
            number("succeeded"),
            number("failed"),
            number("cancelled"),
        )
        running = max(0, number("running"))
        retry_waiting = max(0, number("retry_waiting"))
        finished = succeeded + failed + cancelled
        created = float(fields.get("created_at", now))
        remaining = max(0, total - finished)
        ended = "last_finished_at" in fields and total > 0 and not remaining
        elapsed = max(1e-9, (float(fields["last_finished_at"]) if ended else now) - created)
        throughput = finished / elapsed
        return BatchStatus(
            batch_id=batch_id,
            total=total,
            queued=max(0, remaining - running - retry_waiting),
            running=running,
            retry_waiting=retry_waiting,
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
            cached=number("cached"),
            requests=number("requests"),
            rate_limited=number("rate_limited"),
            prompt_tokens=number("prompt_tokens"),
            completion_tokens=number("completion_tokens"),
            tokens=number("tokens"),
            cost=float(fields.get("cost", 0.0)),
            max_cost=float(fields["max_cost"]) if "max_cost" in fields else None,
            max_tokens=int(fields["max_tokens"]) if "max_tokens" in fields else None,
            cancel_requested=bool(fields.get("cancel_requested")),
            paused=bool(fields.get("paused")),
            created_at=created,
            elapsed=elapsed,
            throughput=throughput,
            eta_seconds=remaining / throughput
            if throughput > 0 and remaining
            else (0.0 if not remaining else None),
            source=fields.get("source"),
            deployments=_deployment_counts(per_deployment),
        )

    async def _add_call(self, batch_id: str, sign: int, retrying: bool) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.batch(batch_id), "running", sign)
            pipe.hincrby(keys.batch(batch_id), "requests", sign)
            if retrying:
                pipe.hincrby(keys.batch(batch_id), "retry_waiting", -sign)
            await pipe.execute()


def _deployment_counts(raw: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for key, value in sorted(raw.items()):
        name, _, outcome = key.decode().rpartition("\t")
        counts.setdefault(name, {})[outcome] = int(value)
    return counts
