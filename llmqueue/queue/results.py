"""A job's final result: how each ending is written down, and how it is stored.

The builders are plain functions: ``succeeded`` (from the provider's answer or the response cache),
``failed`` (a provider failure that ends the job), ``cancelled`` (its batch was cancelled or spent),
``unrunnable`` (a payload that cannot be run) and ``internal_error`` (the worker itself failed on it).
:class:`ResultWriter` stores them; a paid result is stored patiently (:meth:`ResultWriter.keep_paid`),
and the endings without a call are stored and told to the event sinks in one step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from arq.worker import Retry
from redis.exceptions import RedisError

from llmqueue.llm.as_sent import request_id_of_response
from llmqueue.llm.response import response_cost, response_dict, response_usage
from llmqueue.models import AttemptError, Job, JobResult, ResultStatus, Timings
from llmqueue.ops.events import EventSink, JobEvent, emit
from llmqueue.queue.call import Call
from llmqueue.queue.cancel import BATCH_CANCELLED
from llmqueue.queue.store import AttemptStart, JobStore
from llmqueue.redaction import redis_error_line
from llmqueue.settings import RESULT_STORE_PATIENCE

logger = logging.getLogger("llmqueue.worker")

REQUEUE_AFTER_STORE_ERROR = 5.0
"""Seconds before a job whose result Redis refused is tried again."""

STOP_MESSAGES = {
    "cancelled": BATCH_CANCELLED,
    "budget_exceeded": "the batch reached its cost or token budget",
}
"""What a job's result says when its batch stopped it, by the stop's reason."""


def call_result(call: Call, status: ResultStatus, *, errors: list[AttemptError], worker_id: str) -> JobResult:
    """The result of ``call`` with only what every ending of a call has in common filled in."""
    return JobResult(
        job_id=call.job.id,
        batch_id=call.job.batch_id,
        status=status,
        model=call.model,
        attempts=call.attempt,
        errors=errors,
        timings=Timings(queued_at=call.job.created_at, started_at=call.start.started_at),
        worker_id=worker_id,
        metadata=call.job.metadata,
        deployment=call.deployment_name,
    )


def succeeded(call: Call, response: Any, *, worker_id: str) -> JobResult:
    """The provider answered ``call``: the answer, its usage and its cost."""
    result = call_result(call, "succeeded", errors=call.start.failures, worker_id=worker_id)
    result.response = response_dict(response)
    result.usage = response_usage(response)
    result.cost = response_cost(response)
    result.request_id = request_id_of_response(response)
    return result


def from_cache(call: Call, response: dict[str, Any], *, worker_id: str) -> JobResult:
    """The response cache answered ``call``: no provider call, no cost."""
    result = call_result(call, "succeeded", errors=call.start.failures, worker_id=worker_id)
    result.attempts, result.response, result.cost, result.cached = (
        len(call.start.failures),
        response,
        0.0,
        True,
    )
    return result


def failed(call: Call, error: AttemptError, *, worker_id: str) -> JobResult:
    """``call`` failed with ``error`` and the job ends: every failure, and the request to retry it by."""
    result = call_result(call, "failed", errors=[*call.start.failures, error], worker_id=worker_id)
    result.request = call.job.model_dump(mode="json", exclude={"reply_to"})
    return result


def cancelled(job: Job, reason: str, start: AttemptStart, *, worker_id: str) -> JobResult:
    """A job of a cancelled or spent batch (``reason``), ended without calling the provider."""
    failures = start.failures
    stop = AttemptError(attempt=len(failures), kind=reason, message=STOP_MESSAGES.get(reason, reason))
    return JobResult(
        job_id=job.id,
        batch_id=job.batch_id,
        status="cancelled",
        attempts=len(failures),
        errors=[*failures, stop],
        timings=Timings(queued_at=job.created_at, started_at=start.started_at),
        worker_id=worker_id,
        metadata=job.metadata,
        request=job.model_dump(mode="json", exclude={"reply_to"}),
    )


def unrunnable(
    job_id: str, payload: Any, reason: str, *, worker_id: str, request: dict[str, Any] | None = None
) -> JobResult:
    """A job that cannot be run as given (``invalid_job``, for ``reason``); with its ``request`` when it
    is a valid job that other settings would run (``retry --failed`` queues it again)."""
    batch_id = payload.get("batch_id") if isinstance(payload, dict) else None
    return JobResult(
        job_id=job_id,
        batch_id=batch_id if isinstance(batch_id, str) else None,
        status="failed",
        attempts=0,
        errors=[AttemptError(attempt=0, kind="invalid_job", message=reason)],
        timings=Timings(queued_at=datetime.now(UTC)),
        worker_id=worker_id,
        request=request,
    )


def internal_error(
    job_id: str,
    payload: Any,
    reason: str,
    *,
    failures: list[AttemptError],
    request: dict[str, Any] | None,
    worker_id: str,
) -> JobResult:
    """A job the worker failed on (``internal_error``, for ``reason``), after its earlier ``failures``."""
    batch_id = payload.get("batch_id") if isinstance(payload, dict) else None
    return JobResult(
        job_id=job_id,
        batch_id=batch_id if isinstance(batch_id, str) else None,
        status="failed",
        attempts=len(failures),
        errors=[*failures, AttemptError(attempt=len(failures), kind="internal_error", message=reason)],
        timings=Timings(queued_at=datetime.now(UTC)),
        worker_id=worker_id,
        request=request,
    )


@dataclass
class ResultWriter:
    """Stores final results in ``store`` for one worker (``worker_id``, its events to ``sinks``)."""

    store: JobStore
    worker_id: str = ""
    sinks: Sequence[EventSink] = ()
    release_on_finish: bool = False
    """A final result also ends the job's run in the queue (one round trip less)."""
    released: set[str] = field(default_factory=set)
    """Jobs whose final result also ended their claim."""
    writes_refused: bool = False
    """True while Redis refuses to store a result this worker paid for."""

    async def finish(self, result: JobResult, **options: Any) -> None:
        """Store the final result (and, with ``release_on_finish``, end the job's run in the queue);
        ``options`` are :meth:`JobStore.finish`'s."""
        stored = await self.store.finish(result, release=self.release_on_finish, **options)
        if stored and self.release_on_finish:
            self.released.add(result.job_id)

    async def keep_paid(self, result: JobResult, *, reply_to: str | None) -> None:
        """Store the result of a provider call, retrying while Redis refuses it (full, read-only,
        restarting) for up to ``RESULT_STORE_PATIENCE`` seconds: the call was paid for, running the job
        again would pay twice. Meanwhile ``writes_refused`` is set (the runner starts no provider call)."""
        deadline = time.monotonic() + RESULT_STORE_PATIENCE
        delay = 0.25
        while True:
            try:
                await self.finish(result, reply_to=reply_to, was_calling=True)
            except RedisError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if not self.writes_refused:
                    logger.warning(
                        "Redis refuses to store a paid result (%s); retrying, no new calls",
                        redis_error_line(exc),
                    )
                self.writes_refused = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.writes_refused = False
            return

    async def stopped(self, job: Job, reason: str, start: AttemptStart) -> None:
        """A job of a cancelled or spent batch: it ends as cancelled without calling the provider."""
        result = cancelled(job, reason, start, worker_id=self.worker_id)
        await self.finish(result, reply_to=job.reply_to, was_retry_waiting=bool(start.failures))
        event = JobEvent("cancelled", job.id, job.batch_id, reason=reason, priority=job.priority)
        emit(self.sinks, replace(event, worker_id=self.worker_id))

    async def unrunnable(self, job_id: str, payload: Any, reason: str, *, request: Job | None = None) -> None:
        """A job that cannot be run as given: a failed result, and the worker goes on. ``request``: a
        valid job these settings cannot run, kept in the result so that it can be queued again."""
        kept = None if request is None else request.model_dump(mode="json", exclude={"reply_to"})
        result = unrunnable(job_id, payload, reason, worker_id=self.worker_id, request=kept)
        await self.finish(result, reply_to=_reply_to(payload))
        event = JobEvent("invalid", job_id, result.batch_id, reason="invalid_job", message=reason)
        emit(self.sinks, replace(event, worker_id=self.worker_id))

    async def internal_error(self, job_id: str, payload: Any, reason: str) -> None:
        """End a job the worker failed on (``reason``, redacted) as ``failed``, after its earlier
        failures. If even that result cannot be stored (Redis refuses it), the job is put back in the
        queue instead (arq's ``Retry``)."""
        logger.error("job %s failed inside the worker: %s", job_id, reason)
        failures: list[AttemptError] = []
        request: dict[str, Any] | None
        try:
            failures, _queued_at = await self.store.read_waiting(job_id)
            fields = payload if isinstance(payload, dict) else {}
            request = Job.model_validate(fields).model_dump(mode="json", exclude={"reply_to"})
        except Exception:  # an invalid job keeps no request; its failures are read when Redis answers
            request = None
        result = internal_error(
            job_id, payload, reason, failures=failures, request=request, worker_id=self.worker_id
        )
        try:
            await self.finish(result, reply_to=_reply_to(payload))
        except RedisError as store_error:
            logger.warning(
                "job %s: its failed result cannot be stored (%s); put back",
                job_id,
                redis_error_line(store_error),
            )
            raise Retry(defer=REQUEUE_AFTER_STORE_ERROR) from None
        event = JobEvent("failed", job_id, result.batch_id, reason="internal_error", message=reason)
        emit(self.sinks, replace(event, worker_id=self.worker_id))


def _reply_to(payload: Any) -> str | None:
    reply_to = payload.get("reply_to") if isinstance(payload, dict) else None
    return reply_to if isinstance(reply_to, str) else None
