"""Batches: a file of requests submitted as one unit, with totals, budgets, cancel and retry.

:class:`Batches` is the one object the CLI and ``llmqueue run`` use; submitting lives in
``llmqueue.batches.submit``, following a running batch in ``llmqueue.batches.follow``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from llmqueue import keys
from llmqueue.batches.blocks import drop_blocks
from llmqueue.batches.follow import STALL_CHECK_SECONDS, BatchFollowing
from llmqueue.batches.submit import (
    BATCH_ID_PATTERN,
    BatchSubmission,
    SubmitReport,
    check_batch_id,
    new_batch_id,
    request_fingerprint,
)
from llmqueue.errors import BatchError
from llmqueue.models import Job, JobResult
from llmqueue.queue.cancel import BATCH_CANCELLED, cancel_queued, cancelled_result
from llmqueue.queue.ledger import BatchLedger, BatchStatus
from llmqueue.queue.pauses import Pauses
from llmqueue.queue.ready import set_weight
from llmqueue.queue.retention import keep_batch, queued_batch_ttl
from llmqueue.queue.scripts import lane_of
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings

__all__ = [
    "BATCH_ID_PATTERN",
    "STALL_CHECK_SECONDS",
    "Batches",
    "SubmitReport",
    "check_batch_id",
    "new_batch_id",
    "request_fingerprint",
]
_CHUNK = 1000


class Batches(BatchSubmission, BatchFollowing):
    """Batch operations on one queue, through a :class:`JobStore`."""

    def __init__(self, store: JobStore, settings: Settings | None = None) -> None:
        """``settings``, when they are the workers', let submission refuse what workers would refuse."""
        self.store = store
        self.settings = settings
        self.redis = store.redis
        self.ledger = BatchLedger(store.redis)
        self.pauses = Pauses(store.redis, store.queue_name)

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's counts, usage, cost, throughput and ETA. Raises BatchError for an unknown batch."""
        return await self.ledger.status(batch_id)

    async def results(self, batch_id: str) -> AsyncIterator[tuple[str, str, JobResult | None]]:
        """``(job_id, custom_id, result or None)`` for every job of the batch, in input order."""
        await self.status(batch_id)
        start = 0
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                return
            job_ids = [member.decode() for member in members]
            custom_ids = await self.redis.hmget(keys.batch_custom_ids(batch_id), job_ids)
            found = await self.store.get_results(job_ids)
            for job_id, custom_id, result in zip(job_ids, custom_ids, found, strict=True):
                yield job_id, custom_id.decode() if custom_id else "", result
            start += len(members)

    async def cancel(self, batch_id: str, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Cancel the batch: queued and retry-waiting jobs end as cancelled now, running ones finish.

        Workers also check the batch's cancel flag before each start, so a job picked up while this
        runs is cancelled too. Works in chunks of 1,000 jobs, a few round trips each, calling
        ``on_progress(jobs looked at, jobs cancelled)`` after each. Returns how many jobs it cancelled.
        """
        await self.status(batch_id)
        await self.redis.hset(keys.batch(batch_id), "cancel_requested", 1)
        # Lines of a submitted batch not queued yet are dropped: its total becomes the jobs it lists.
        await drop_blocks(self, batch_id)
        # A Batch API batch's jobs wait at the provider, not in the queue: they end as cancelled here
        # (an answer its process stores later is not kept: a result is stored once).
        at_provider = await self.redis.hget(keys.batch(batch_id), "via") == b"batch-api"
        cancelled = seen = 0
        start = 0
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                return cancelled
            job_ids = [member.decode() for member in members]
            if at_provider:
                cancelled += await self._cancel_at_provider(batch_id, job_ids)
            else:
                cancelled += await self._cancel_chunk(batch_id, job_ids)
            seen += len(job_ids)
            start += len(members)
            if on_progress is not None:
                on_progress(seen, cancelled)

    async def _cancel_chunk(self, batch_id: str, job_ids: list[str]) -> int:
        cancelled = await cancel_queued(self.store, job_ids, reason=BATCH_CANCELLED, batch_id=batch_id)
        return len(cancelled)

    async def _cancel_at_provider(self, batch_id: str, job_ids: list[str]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.result(job_id), keys.arq_in_progress(job_id))
            found = await pipe.execute()
        waiting = [job_id for job_id, count in zip(job_ids, found, strict=True) if not count]
        if not waiting:
            return 0
        states = await self.store.read_waiting_many(waiting)
        results = [
            (
                cancelled_result(
                    job_id,
                    batch_id=batch_id,
                    failures=failures,
                    reason=BATCH_CANCELLED,
                    queued_at=queued_at,
                ),
                bool(failures),
            )
            for job_id, (failures, queued_at) in zip(waiting, states, strict=True)
        ]
        stored = await self.store.finish_many(results)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in waiting:
                pipe.zrem(self.store.queue_name, job_id)
                pipe.delete(keys.arq_job(job_id), keys.arq_retry(job_id))
            await pipe.execute()
        return sum(stored)

    async def pause(self, batch_id: str) -> None:
        """Pause the batch: workers start no call for its jobs (those in flight finish) until
        :meth:`resume`; its queued jobs are held, not failed (:mod:`llmqueue.queue.pauses`)."""
        await self.status(batch_id)
        await self.pauses.pause_batch(batch_id)

    async def resume(self, batch_id: str) -> int:
        """Resume a paused batch: its queued jobs take their turn again now. Returns how many are queued."""
        await self.status(batch_id)
        await self.pauses.resume_batch(batch_id)
        return (await self.status(batch_id)).queued

    async def retry_failed(self, batch_id: str) -> int:
        """Queue the batch's failed jobs again, with a fresh retry budget. Returns how many."""
        return await self._requeue(batch_id, "failed")

    async def retry_cancelled(
        self, batch_id: str, *, max_cost: float | None = None, max_tokens: int | None = None
    ) -> int:
        """Queue the batch's cancelled jobs again (a cancel or its budget stopped them), with
        ``max_cost`` (USD) and ``max_tokens`` as its budget when given. Returns how many.

        Raises BatchError when the batch's budget is still spent: its jobs would end cancelled again.
        """
        caps = {"max_cost": max_cost, "max_tokens": max_tokens}
        if given := {name: value for name, value in caps.items() if value is not None}:
            await self.redis.hset(keys.batch(batch_id), mapping=given)
        status = await self.status(batch_id)
        if status.budget_exceeded:
            higher = " and ".join(status.caps_to_raise)
            raise BatchError(
                f"batch {batch_id} spent ${status.cost:.4f} and {status.tokens} tokens of its budget "
                f"({_budget_words(status)}): give a higher one to go on ({higher})"
            )
        return await self._requeue(batch_id, "cancelled")

    async def _requeue(self, batch_id: str, status_name: str) -> int:
        await self.status(batch_id)
        jobs: list[Job] = []
        async for _job_id, _custom_id, result in self.results(batch_id):
            if result is not None and result.status == status_name and result.request:
                jobs.append(Job.model_validate(result.request))
        for start in range(0, len(jobs), _CHUNK):
            chunk = jobs[start : start + _CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*[keys.result(job.id) for job in chunk])
                pipe.delete(*[keys.done(job.id) for job in chunk])
                pipe.hincrby(keys.batch(batch_id), status_name, -len(chunk))
                pipe.hdel(keys.batch(batch_id), "cancel_requested")
                keep_batch(pipe, batch_id, queued_batch_ttl(self.store.job_ttl, self.store.result_ttl))
                await pipe.execute()
            await self.store.enqueue(chunk)
        return len(jobs)

    async def list_batches(self) -> list[str]:
        """The batches Redis holds, oldest first; entries of batches that expired are dropped here."""
        listed = [raw.decode() for raw in await self.redis.zrange(keys.batches(), 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in listed:
                pipe.exists(keys.batch(batch_id))
            present = await pipe.execute()
        expired = [batch_id for batch_id, here in zip(listed, present, strict=True) if not here]
        if expired:
            await self.redis.zrem(keys.batches(), *expired)
        return [batch_id for batch_id, here in zip(listed, present, strict=True) if here]

    async def forget(self, batch_id: str) -> int:
        """Remove a finished batch from Redis now: its jobs' results and what it kept about them.

        Raises BatchError for an unknown batch, or one with jobs still queued or running (cancel it
        first: its running jobs would store results for a batch no longer there). Returns how many
        keys were deleted. Without this, a finished batch expires ``result_ttl`` after its last result.
        """
        status = await self.status(batch_id)
        if not status.done:
            left = status.total - status.finished
            raise BatchError(
                f"batch {batch_id} is not finished ({left} job(s) queued or running): cancel it first "
                f"(`llmqueue cancel {batch_id}`), then forget it once its running jobs have ended"
            )
        deleted = 0
        start = 0
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                break
            job_keys: list[str] = []
            for raw in members:
                job_id = raw.decode()
                job_keys += [keys.result(job_id), keys.done(job_id), keys.state(job_id)]
                job_keys += [keys.attempt_errors(job_id)]
            deleted += await self.redis.delete(*job_keys)
            start += len(members)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.batch_keys(batch_id))
            pipe.zrem(keys.batches(), batch_id)
            pipe.srem(keys.windowed_batches(self.store.queue_name), batch_id)
            set_weight(pipe, self.store.queue_name, lane_of(batch_id), 1.0)
            replies = await pipe.execute()
        return deleted + int(replies[0])


def _budget_words(status: BatchStatus) -> str:
    caps = [f"max ${status.max_cost:g}"] if status.max_cost is not None else []
    caps += [f"max {status.max_tokens} tokens"] if status.max_tokens is not None else []
    return ", ".join(caps)
