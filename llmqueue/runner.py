"""What a worker does with one job: limiter → LiteLLM → reconcile → result, or a re-enqueue.

Attempts are counted here, not by arq: arq counts every start (limiter re-defers, crash restarts),
llmqueue counts only provider calls that failed, kept in Redis with the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import litellm
from arq.worker import Retry

from llmqueue import serialization
from llmqueue.backoff import RetryPolicy
from llmqueue.classify import classify
from llmqueue.errors import ConfigError, JobValidationError, ProviderError, RateLimitedError
from llmqueue.jobstore import AttemptStart, JobStore
from llmqueue.limiter import RateLimiter
from llmqueue.llm_call import call_kwargs, call_provider, job_model, supports_prompt_caching
from llmqueue.models import AttemptError, CompletionJob, JobResult, Timings, Usage
from llmqueue.settings import LLMConfig, Settings
from llmqueue.tokens import estimate_tokens, usage_tokens

logger = logging.getLogger("llmqueue.worker")

# The scope-wide pause after a 429 that came without a retry-after header, in seconds.
DEFAULT_COOLDOWN = 1.0


@dataclass
class JobRunner:
    settings: Settings
    store: JobStore
    limiter: RateLimiter
    worker_id: str

    async def run(self, job_id: str, payload: Any) -> None:
        """Run one start of a job. Raises arq's Retry to re-enqueue it; returns once a result is stored."""
        try:
            job, llm = self._parse(payload)
        except (JobValidationError, ConfigError) as exc:
            await self._finish_unrunnable(job_id, payload, str(exc))
            return
        start = await self.store.begin_attempt(job_id, job.batch_id)
        if start.has_result:
            logger.info("job %s already has a result; not running it again", job_id)
            return
        if start.stop_reason is not None:
            await self._finish_stopped(job, start)
            return
        model = job_model(job, llm)
        scope = llm.limit_scope or model
        limit = self.settings.limit_for(scope, llm)
        estimate = estimate_tokens(job, model, llm.default_completion_tokens)
        # Everything CPU-bound happens before admission, so the request leaves soon after it is admitted.
        kwargs = call_kwargs(job, llm, supports_caching=supports_prompt_caching(model))
        admission = await self.limiter.acquire(
            scope, limit, tokens=estimate, max_wait=self.settings.worker.max_inline_wait
        )
        if not admission.admitted:
            # Not an attempt: the job goes back to the queue instead of holding a worker slot.
            raise Retry(defer=admission.wait)
        if admission.wait > 0:
            await asyncio.sleep(admission.wait)
            # A 429 seen elsewhere while this job slept pauses it too, reservation or not.
            pause = await self.limiter.cooldown(scope, 0)
            if pause > 0:
                raise Retry(defer=pause)

        attempt = len(start.failures) + 1
        counting = asyncio.ensure_future(self.store.calling(job.batch_id, retrying=bool(start.failures)))
        began = time.monotonic()
        try:
            response = await call_provider(job.kind, kwargs, timeout=llm.timeout + 5)
        except Exception as exc:
            await counting
            await self.limiter.adjust(scope, limit, tokens=estimate)
            error = classify(exc, self._secrets(llm))
            await self._handle_failure(job, llm, model, scope, attempt, start, error)
            return
        await counting
        used = usage_tokens(response)
        if used is not None:
            await self.limiter.adjust(scope, limit, tokens=estimate - used)
        result = JobResult(
            job_id=job.id,
            batch_id=job.batch_id,
            status="succeeded",
            model=model,
            response=_as_dict(response),
            usage=_usage(response),
            cost=_cost(response),
            attempts=attempt,
            errors=start.failures,
            timings=Timings(queued_at=job.created_at, started_at=start.started_at),
            worker_id=self.worker_id,
            metadata=job.metadata,
        )
        await self.store.finish(result, reply_to=job.reply_to, was_calling=True)
        logger.info(
            "job %s succeeded model=%s attempt=%d latency=%.3fs tokens=%s",
            job.id,
            model,
            attempt,
            time.monotonic() - began,
            used,
        )

    def _parse(self, payload: Any) -> tuple[CompletionJob, LLMConfig]:
        reason = serialization.is_invalid(payload)
        if reason is not None:
            raise JobValidationError(reason)
        job = CompletionJob.parse(payload)
        return job, self.settings.llm_for(job.llm_config)

    async def _handle_failure(
        self,
        job: CompletionJob,
        llm: LLMConfig,
        model: str,
        scope: str,
        attempt: int,
        start: AttemptStart,
        error: ProviderError,
    ) -> None:
        retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
        if isinstance(error, RateLimitedError):
            await self.limiter.cooldown(scope, retry_after if retry_after is not None else DEFAULT_COOLDOWN)
        policy = RetryPolicy.from_llm(llm)
        summary = AttemptError(
            attempt=attempt, kind=error.kind, message=error.message, status_code=error.status_code
        )
        if error.retryable and policy.allows_retry(attempt):
            summary.retry_in = policy.delay(attempt, retry_after)
            await self.store.record_error(job.id, job.batch_id, summary)
            logger.info(
                "job %s attempt %d failed (%s), retrying in %.1fs",
                job.id,
                attempt,
                error.kind,
                summary.retry_in,
            )
            raise Retry(defer=summary.retry_in)
        result = JobResult(
            job_id=job.id,
            batch_id=job.batch_id,
            status="failed",
            model=model,
            attempts=attempt,
            errors=[*start.failures, summary],
            timings=Timings(queued_at=job.created_at, started_at=start.started_at),
            worker_id=self.worker_id,
            metadata=job.metadata,
            request=job.model_dump(mode="json", exclude={"reply_to"}),
        )
        await self.store.finish(result, reply_to=job.reply_to, was_calling=True)
        logger.warning("job %s failed after %d attempt(s): %s", job.id, attempt, error.message)

    async def _finish_stopped(self, job: CompletionJob, start: AttemptStart) -> None:
        """A job of a cancelled or spent batch: it ends as cancelled without calling the provider."""
        reason = start.stop_reason or "cancelled"
        message = {
            "cancelled": "the batch was cancelled",
            "budget_exceeded": "the batch reached its cost or token budget",
        }.get(reason, reason)
        result = JobResult(
            job_id=job.id,
            batch_id=job.batch_id,
            status="cancelled",
            attempts=len(start.failures),
            errors=[*start.failures, AttemptError(attempt=len(start.failures), kind=reason, message=message)],
            timings=Timings(queued_at=job.created_at, started_at=start.started_at),
            worker_id=self.worker_id,
            metadata=job.metadata,
            request=job.model_dump(mode="json", exclude={"reply_to"}),
        )
        await self.store.finish(result, reply_to=job.reply_to, was_retry_waiting=bool(start.failures))

    async def _finish_unrunnable(self, job_id: str, payload: Any, reason: str) -> None:
        """A job that cannot be run as given: record a failed result and keep the worker going."""
        fields = payload if isinstance(payload, dict) else {}
        reply_to = fields.get("reply_to")
        batch_id = fields.get("batch_id")
        result = JobResult(
            job_id=job_id,
            batch_id=batch_id if isinstance(batch_id, str) else None,
            status="failed",
            attempts=0,
            errors=[AttemptError(attempt=0, kind="invalid_job", message=reason)],
            timings=Timings(queued_at=datetime.now(UTC)),
            worker_id=self.worker_id,
        )
        await self.store.finish(result, reply_to=reply_to if isinstance(reply_to, str) else None)
        logger.warning("job %s is invalid and was not run: %s", job_id, reason)

    def _secrets(self, llm: LLMConfig) -> list[str]:
        return [llm.api_key.get_secret_value()] if llm.api_key else []


def _as_dict(response: Any) -> dict[str, Any]:
    if hasattr(response, "model_dump"):
        return response.model_dump()  # type: ignore[no-any-return]
    return dict(response)


def _usage(response: Any) -> Usage | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    data = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    return Usage(
        prompt_tokens=data.get("prompt_tokens") or 0,
        completion_tokens=data.get("completion_tokens") or 0,
        total_tokens=data.get("total_tokens") or 0,
    )


def _cost(response: Any) -> float | None:
    """LiteLLM's cost for the call; None for models without a known price."""
    try:
        cost = litellm.completion_cost(completion_response=response)
    except Exception:
        return None
    return float(cost) if cost else None
