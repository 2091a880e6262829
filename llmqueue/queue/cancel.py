"""Cancelling queued jobs: they leave the queue before any worker takes them, and end as ``cancelled``.

One script takes each job out (``lua/cancel.lua``) unless it has a result or a worker holds it, in the
same step a claim would take it, so a job is either cancelled before any call is made, or runs and
keeps its own result. Each job cancelled then gets a ``cancelled`` result, counted in its batch's
totals and told to whoever waits for it (its producer's inbox, its ``done`` list).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from llmqueue import keys
from llmqueue.models import AttemptError, JobResult, Timings
from llmqueue.queue import payload
from llmqueue.queue.scripts import now_ms, script
from llmqueue.queue.store import JobStore

_CANCEL = script("cancel.lua")
CHUNK = 1000

BATCH_CANCELLED = "the batch was cancelled"
"""What the result of a job its batch's cancel ended says."""


async def cancel_queued(
    store: JobStore, job_ids: Sequence[str], *, reason: str, batch_id: str | None = None
) -> list[str]:
    """Cancel those of ``job_ids`` that are queued or waiting for a retry; the ids cancelled.

    Jobs running now, finished, or unknown are left as they are. ``reason`` is the message of the
    ``cancelled`` error each result carries (``the batch was cancelled``). In chunks of 1,000 ids,
    three round trips each. ``batch_id`` is the batch of jobs whose payload expired (the others say).
    """
    cancel = store.redis.register_script(_CANCEL)
    prefix = keys.ready_prefix(store.queue_name)
    cancelled: list[str] = []
    for start in range(0, len(job_ids), CHUNK):
        chunk = list(job_ids[start : start + CHUNK])
        args = [prefix, store.queue_name, now_ms(), keys.result(""), keys.arq_retry(""), *chunk]
        reply = await cancel(args=args)
        taken = [(reply[i].decode(), reply[i + 1]) for i in range(0, len(reply), 2)]
        if not taken:
            continue
        async with store.redis.pipeline(transaction=False) as pipe:
            for job_id, _ in taken:
                pipe.lrange(keys.attempt_errors(job_id), 0, -1)
            errors = await pipe.execute()
        results: list[tuple[JobResult, bool]] = []
        inboxes: list[str | None] = []
        for (job_id, raw), failed in zip(taken, errors, strict=True):
            job = _queued_job(raw)
            failures = [AttemptError.model_validate_json(error) for error in failed]
            job.setdefault("batch_id", batch_id)
            results.append((_cancelled(job_id, job, failures, reason), bool(failures)))
            inboxes.append(job.get("reply_to") if isinstance(job.get("reply_to"), str) else None)
        stored = await store.finish_many(results, inboxes)
        cancelled += [job_id for (job_id, _), ok in zip(taken, stored, strict=True) if ok]
    return cancelled


def _queued_job(raw: bytes) -> dict[str, Any]:
    """The job as it was queued (its batch, inbox and enqueue time), or {} for an expired payload."""
    if not raw:
        return {}
    data = payload.deserialize_job(raw)
    job = data["a"][0] if isinstance(data["a"][0], dict) else {}
    return {**job, "_enqueued_ms": data.get("et")}


def cancelled_result(
    job_id: str,
    *,
    batch_id: str | None,
    failures: list[AttemptError],
    reason: str,
    queued_at: datetime,
    metadata: dict[str, Any] | None = None,
) -> JobResult:
    """The ``cancelled`` result of a job taken out before any worker ran it: its earlier ``failures``,
    then a ``cancelled`` error saying ``reason``."""
    return JobResult(
        job_id=job_id,
        batch_id=batch_id,
        status="cancelled",
        attempts=len(failures),
        errors=[*failures, AttemptError(attempt=len(failures), kind="cancelled", message=reason)],
        timings=Timings(queued_at=queued_at),
        metadata=metadata or {},
    )


def _cancelled(job_id: str, job: dict[str, Any], failures: list[AttemptError], reason: str) -> JobResult:
    enqueued = job.get("_enqueued_ms")
    queued_at = (
        datetime.fromtimestamp(enqueued / 1000, UTC) if isinstance(enqueued, int) and enqueued else None
    )
    batch_id = job.get("batch_id")
    metadata = job.get("metadata")
    return cancelled_result(
        job_id,
        batch_id=batch_id if isinstance(batch_id, str) else None,
        failures=failures,
        reason=reason,
        queued_at=queued_at or datetime.now(UTC),
        metadata=metadata if isinstance(metadata, dict) else None,
    )
