"""Job storage in Redis: enqueueing in arq's format, attempt state, and final results.

Producers and workers both go through this class, so the layout of a job's keys lives in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import Any, TypeVar

from pydantic_core import PydanticSerializationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from llmqueue import keys
from llmqueue.coalesce import ScriptCoalescer
from llmqueue.models import AttemptError, Job, JobResult, replace_lone_surrogates
from llmqueue.queue import ledger, payload
from llmqueue.queue.ledger import BatchLedger
from llmqueue.queue.replication import ReplicaWait
from llmqueue.queue.scripts import lane_of, now_ms, script

_LUA = resources.files("llmqueue.queue").joinpath("lua")
_ENQUEUE = script("enqueue.lua")
_FINISH = _LUA.joinpath("finish.lua").read_text(encoding="utf-8")
ENQUEUE_CHUNK = 2000
ChunkCommands = Callable[[Pipeline, Sequence[Job]], None]
"""Commands queued in the transaction of one chunk of jobs being enqueued."""
WAKE_TOKENS = 16
T = TypeVar("T")


@dataclass(frozen=True)
class AttemptStart:
    """What a worker needs to know as it picks a job up."""

    has_result: bool
    failures: list[AttemptError]
    started_at: datetime
    stop_reason: str | None = None
    """``cancelled`` or ``budget_exceeded`` when the job's batch must not start more jobs."""
    fallback: int = 0
    """How many of its model's ``fallbacks`` the job has moved on by (0: still its own model)."""
    fallback_after: int = 0
    """Failed calls before the current fallback began: its retries are counted from there."""
    has_cost_budget: bool = False
    """The job's batch has a ``max_cost``: each call reserves its estimated price first."""
    has_token_budget: bool = False
    """The job's batch has a ``max_tokens``: each call reserves its estimated tokens first."""
    batch_paused: bool = False
    """The job's batch is paused (``llmqueue pause``): the job is held, no call made."""
    paused_scopes: frozenset[str] = frozenset()
    """The limit scopes (models, deployments) paused as the job starts: calls to them are held."""

    @classmethod
    def from_replies(
        cls,
        has_result: bool,
        state: list[bytes | None],
        errors: list[bytes],
        gate: list[bytes | None] | None,
        paused_scopes: list[bytes] | None = None,
    ) -> AttemptStart:
        """From Redis's replies: the result's existence, the state hash's ``started_at``, ``fallback`` and
        ``fallback_after``, the errors, the batch gate, the paused scopes."""
        started, fallback, fallback_after = state
        assert started is not None  # set (HSETNX) in the same round trip
        return cls(
            has_result=has_result,
            failures=[AttemptError.model_validate_json(raw) for raw in errors],
            started_at=datetime.fromisoformat(started.decode()),
            stop_reason=ledger.stop_reason(gate) if gate is not None else None,
            fallback=int(fallback or 0),
            fallback_after=int(fallback_after or 0),
            has_cost_budget=gate is not None and gate[ledger.GATE_FIELDS.index("max_cost")] is not None,
            has_token_budget=gate is not None and gate[ledger.GATE_FIELDS.index("max_tokens")] is not None,
            batch_paused=gate is not None and gate[ledger.GATE_FIELDS.index("paused")] is not None,
            paused_scopes=frozenset(scope.decode() for scope in paused_scopes or ()),
        )


class JobStore:
    """Reads and writes one queue's jobs and results."""

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str,
        job_ttl: float,
        result_ttl: float,
        coalescer: ScriptCoalescer | None = None,
        replicas: ReplicaWait | None = None,
    ) -> None:
        """With ``coalescer`` (a worker's), results stored together share a round trip. With
        ``replicas``, a submission and a result are acknowledged once replicas hold them (and written
        again across a failover)."""
        self.redis = redis
        self.replicas = replicas
        self.queue_name = queue_name
        self.job_ttl = job_ttl
        self.job_ttl_ms = int(job_ttl * 1000)
        self.result_ttl = int(result_ttl)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._finish = redis.register_script(_FINISH)
        self._finish_one = coalescer.register_script(_FINISH) if coalescer else self._finish

    async def enqueue(
        self, jobs: Sequence[Job], *, defer: float = 0.0, also: ChunkCommands | None = None
    ) -> list[bool]:
        """Queue the jobs, one transaction per chunk of 2,000; False for an id that was already known.

        Each job waits in its priority's lane for its batch (``llmqueue.queue.ready``), after ``defer``
        seconds when that is positive. ``also(pipe, chunk)`` adds commands to each chunk's transaction
        (a batch registering its jobs): a chunk is queued whole with them, or not at all (Redis out of
        memory, connection lost).
        """
        now = now_ms()
        score = now + int(defer * 1000)
        prefix = keys.ready_prefix(self.queue_name)
        added: list[bool] = []
        for start in range(0, len(jobs), ENQUEUE_CHUNK):
            chunk = jobs[start : start + ENQUEUE_CHUNK]
            args: list[Any] = [prefix, self.queue_name, now]
            args += [keys.arq_job(""), keys.result(""), self.job_ttl_ms, len(chunk)]
            for job in chunk:
                data = payload.arq_job(job, now)
                args += [job.id, data, score, job.priority, lane_of(job.batch_id)]
            flags = await self.acknowledged(partial(self._enqueue_chunk, args, chunk, also))
            added += [bool(flag) for flag in flags]
        return added

    async def _enqueue_chunk(self, args: list[Any], chunk: Sequence[Job], also: ChunkCommands | None) -> Any:
        async with self.redis.pipeline(transaction=True) as pipe:
            await self._enqueue(args=args, client=pipe)
            if also is not None:
                also(pipe, chunk)
            # Wake idle workers now instead of at their next poll (a few tokens: one per worker
            # that should look; the list is trimmed so it never grows).
            wake = keys.wake(self.queue_name)
            pipe.lpush(wake, *([b"1"] * min(WAKE_TOKENS, len(chunk))))
            pipe.ltrim(wake, 0, WAKE_TOKENS - 1)
            return (await pipe.execute())[0]

    async def acknowledged(self, write: Callable[[], Awaitable[T]]) -> T:
        """``write()`` (idempotent), once replicas hold it when ``replicas`` is set (and written again
        after a failover, see ``llmqueue.queue.replication``)."""
        return await (write() if self.replicas is None else self.replicas.confirmed(write))

    async def begin_attempt(self, job_id: str, batch_id: str | None) -> AttemptStart:
        """Read a job's state as a worker picks it up, in one round trip.

        Records the first start time, and says whether the job already has a result (a restart after a
        crash), how many provider calls failed before, and whether its batch was cancelled or spent.
        """
        now = datetime.now(UTC).isoformat()
        state = keys.state(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.result(job_id))
            pipe.hsetnx(state, "started_at", now)
            pipe.hmget(state, ["started_at", "fallback", "fallback_after"])
            pipe.expire(state, self.job_ttl_ms // 1000)
            pipe.lrange(keys.attempt_errors(job_id), 0, -1)
            pipe.hkeys(keys.paused_scopes())
            if batch_id is not None:
                pipe.hmget(keys.batch(batch_id), ledger.GATE_FIELDS)
            replies = await pipe.execute()
        has_result, _, fields, _, errors, paused = replies[:6]
        return AttemptStart.from_replies(
            bool(has_result), fields, errors, replies[6] if batch_id is not None else None, paused
        )

    async def read_waiting(self, job_id: str) -> tuple[list[AttemptError], datetime]:
        """A queued job's failed calls so far and when it was queued; changes nothing."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.attempt_errors(job_id), 0, -1)
            pipe.get(keys.arq_job(job_id))
            errors, raw = await pipe.execute()
        return _waiting(errors, raw)

    async def record_error(
        self, job_id: str, batch_id: str | None, error: AttemptError, *, fallback: int | None = None
    ) -> None:
        """Keep a failed call's summary before the job is re-enqueued; these count against num_retries.

        With ``fallback`` (1-based) the job moves on to that entry of its model's fallbacks, whose
        retries are counted afresh from this call on.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            if fallback is not None:
                pipe.hset(keys.state(job_id), mapping={"fallback": fallback, "fallback_after": error.attempt})
                pipe.expire(keys.state(job_id), self.job_ttl_ms // 1000)
            pipe.rpush(keys.attempt_errors(job_id), error.model_dump_json())
            pipe.expire(keys.attempt_errors(job_id), self.job_ttl_ms // 1000)
            if batch_id is not None:
                BatchLedger.count_retry(pipe, batch_id, rate_limited=error.kind == "rate_limit")
            await pipe.execute()

    async def move_to_fallback(self, job_id: str, fallback: int, *, after: int) -> None:
        """Move a job on to entry ``fallback`` (1-based) of its model's fallbacks without a failed call
        (its model is known to be down); its retries there count from the ``after`` calls failed so far."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.state(job_id), mapping={"fallback": fallback, "fallback_after": after})
            pipe.expire(keys.state(job_id), self.job_ttl_ms // 1000)
            await pipe.execute()

    async def count_reroute(self, job_id: str) -> int:
        """Count that a job was sent to another deployment; returns how often it was so far."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.state(job_id), "reroutes", 1)
            pipe.expire(keys.state(job_id), self.job_ttl_ms // 1000)
            count, _ = await pipe.execute()
        return int(count)

    async def finish(
        self,
        result: JobResult,
        *,
        reply_to: str | None = None,
        was_calling: bool = False,
        was_retry_waiting: bool = False,
        release: bool = False,
    ) -> bool:
        """Store the final result, wake whoever waits for it, and add it to the batch's totals.

        A job gets one result: False (and nothing changed) when it already had one. ``was_calling``
        and ``was_retry_waiting`` say which of the batch's in-between counts the job leaves. With
        ``release`` the job also leaves the queue in the same step (what arq's ``finish_job`` does).
        """
        script_keys, args = self._finish_arguments(
            result, reply_to, was_calling, was_retry_waiting, release=release
        )
        return bool(await self.acknowledged(partial(self._finish_one, keys=script_keys, args=args)))

    async def finish_many(
        self, results: Sequence[tuple[JobResult, bool]], reply_to: Sequence[str | None] = ()
    ) -> list[bool]:
        """``finish`` for many jobs that were not calling, in one round trip: ``(result,
        was_retry_waiting)`` pairs, and the inbox to tell of each (``reply_to``, when given); True for
        each result stored."""
        if not results:
            return []
        inboxes = list(reply_to) or [None] * len(results)
        calls = [
            self._finish_arguments(result, inbox, False, was_retry_waiting)
            for (result, was_retry_waiting), inbox in zip(results, inboxes, strict=True)
        ]

        async def store() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for script_keys, args in calls:
                    await self._finish(keys=script_keys, args=args, client=pipe)
                stored: list[Any] = await pipe.execute()
                return stored

        return [bool(stored) for stored in await self.acknowledged(store)]

    async def read_waiting_many(self, job_ids: Sequence[str]) -> list[tuple[list[AttemptError], datetime]]:
        """``read_waiting`` for many jobs in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.lrange(keys.attempt_errors(job_id), 0, -1)
                pipe.get(keys.arq_job(job_id))
            replies = await pipe.execute()
        return [_waiting(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]

    def _finish_arguments(
        self,
        result: JobResult,
        reply_to: str | None,
        was_calling: bool,
        was_retry_waiting: bool,
        *,
        release: bool = False,
    ) -> tuple[list[str], list[Any]]:
        job_id = result.job_id
        usage = result.usage
        # A retried 429 was counted when it was recorded; a final one is counted here.
        final_429 = (
            result.status == "failed" and bool(result.errors) and result.errors[-1].kind == "rate_limit"
        )
        return (
            [
                keys.result(job_id),
                keys.done(job_id),
                keys.state(job_id),
                keys.attempt_errors(job_id),
                keys.batch(result.batch_id) if result.batch_id else "",
                reply_to or "",
                *(self._release_keys(job_id) if release else [""] * 7),
                *([*keys.batch_keys(result.batch_id), keys.batches()] if result.batch_id else []),
            ],
            [
                result_json(result),
                self.result_ttl,
                job_id,
                result.status,
                result.cost or 0.0,
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
                1 if was_calling else 0,
                1 if was_retry_waiting else 0,
                1 if final_429 else 0,
                1 if result.cached else 0,
                result.batch_id or "",
            ],
        )

    def _release_keys(self, job_id: str) -> list[str]:
        return [
            keys.arq_job(job_id),
            keys.arq_in_progress(job_id),
            keys.arq_retry(job_id),
            self.queue_name,
            keys.claimed(self.queue_name),
            keys.routes(self.queue_name),
            keys.ARQ_ABORT,
        ]

    async def exists_many(self, job_ids: Sequence[str]) -> list[bool]:
        """For each job, True while Redis holds it (queued, deferred or running) or its result."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.arq_job(job_id), keys.result(job_id))
            return [bool(count) for count in await pipe.execute()]

    async def get_result(self, job_id: str) -> JobResult | None:
        raw = await self.redis.get(keys.result(job_id))
        return None if raw is None else JobResult.model_validate_json(raw)

    async def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        """Results in the order of ``job_ids``; None for jobs not finished (or expired)."""
        if not job_ids:
            return []
        raws = await self.redis.mget([keys.result(job_id) for job_id in job_ids])
        return [None if raw is None else JobResult.model_validate_json(raw) for raw in raws]


def _waiting(errors: list[bytes], raw: bytes | None) -> tuple[list[AttemptError], datetime]:
    queued_ms = payload.deserialize_job(raw).get("et") if raw is not None else None
    queued_at = (
        datetime.fromtimestamp(queued_ms / 1000, UTC) if isinstance(queued_ms, int) and queued_ms else None
    )
    return [AttemptError.model_validate_json(e) for e in errors], queued_at or datetime.now(UTC)


def result_json(result: JobResult) -> str:
    """The result as stored: JSON in UTF-8. Text that UTF-8 cannot hold (a lone surrogate in a provider's
    answer) becomes U+FFFD, so a result is never lost to its own encoding."""
    try:
        return result.model_dump_json()
    except PydanticSerializationError:
        data = replace_lone_surrogates(result.model_dump(mode="json"))
        return JobResult.model_validate(data).model_dump_json()
