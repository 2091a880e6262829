"""Job storage in Redis: enqueueing in arq's format, attempt state, and final results.

Producers and workers both go through this class, so the layout of a job's keys lives in one place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources

from redis.asyncio import Redis

from llmqueue import keys, serialization
from llmqueue.models import AttemptError, CompletionJob, JobResult

_ENQUEUE = resources.files("llmqueue").joinpath("lua/enqueue.lua").read_text(encoding="utf-8")
INBOX_TTL_SECONDS = 86400
ENQUEUE_CHUNK = 2000


class JobStore:
    """Reads and writes one queue's jobs and results."""

    def __init__(self, redis: Redis, *, queue_name: str, job_ttl: float, result_ttl: float) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.job_ttl_ms = int(job_ttl * 1000)
        self.result_ttl = int(result_ttl)
        self._enqueue = redis.register_script(_ENQUEUE)

    async def enqueue(self, jobs: Sequence[CompletionJob], *, defer: float = 0.0) -> list[bool]:
        """Queue the jobs in pipelined round trips; False for an id that was already known."""
        score = int(time.time() * 1000)
        added: list[bool] = []
        for start in range(0, len(jobs), ENQUEUE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job in jobs[start : start + ENQUEUE_CHUNK]:
                    payload = serialization.arq_job(job.model_dump(mode="json"), score)
                    await self._enqueue(
                        keys=[keys.arq_job(job.id), keys.result(job.id), self.queue_name],
                        args=[job.id, payload, score + int(defer * 1000), self.job_ttl_ms],
                        client=pipe,
                    )
                added += [bool(flag) for flag in await pipe.execute()]
        return added

    async def begin_attempt(self, job_id: str) -> tuple[list[AttemptError], datetime]:
        """The job's earlier failed attempts and the time it first started (now, the first time)."""
        now = datetime.now(UTC).isoformat()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(keys.state(job_id), "started_at", now)
            pipe.hget(keys.state(job_id), "started_at")
            pipe.expire(keys.state(job_id), self.job_ttl_ms // 1000)
            pipe.lrange(keys.attempt_errors(job_id), 0, -1)
            _, started, _, errors = await pipe.execute()
        return (
            [AttemptError.model_validate_json(raw) for raw in errors],
            datetime.fromisoformat(started.decode()),
        )

    async def record_error(self, job_id: str, error: AttemptError) -> None:
        """Keep a failed attempt's summary; the count of these is the job's retry budget used."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(keys.attempt_errors(job_id), error.model_dump_json())
            pipe.expire(keys.attempt_errors(job_id), self.job_ttl_ms // 1000)
            await pipe.execute()

    async def finish(self, result: JobResult, *, reply_to: str | None = None) -> None:
        """Store the final result and wake whoever waits for it."""
        job_id = result.job_id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.result(job_id), result.model_dump_json(), ex=self.result_ttl)
            pipe.rpush(keys.done(job_id), b"1")
            pipe.expire(keys.done(job_id), self.result_ttl)
            if reply_to:
                pipe.rpush(reply_to, job_id)
                pipe.expire(reply_to, INBOX_TTL_SECONDS)
            pipe.delete(keys.state(job_id), keys.attempt_errors(job_id))
            await pipe.execute()

    async def has_result(self, job_id: str) -> bool:
        return bool(await self.redis.exists(keys.result(job_id)))

    async def get_result(self, job_id: str) -> JobResult | None:
        raw = await self.redis.get(keys.result(job_id))
        return None if raw is None else JobResult.model_validate_json(raw)

    async def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        """Results in the order of ``job_ids``; None for jobs not finished (or expired)."""
        if not job_ids:
            return []
        raws = await self.redis.mget([keys.result(job_id) for job_id in job_ids])
        return [None if raw is None else JobResult.model_validate_json(raw) for raw in raws]
