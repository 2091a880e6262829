"""What a worker does with one job: limiter → LiteLLM → reconcile → result, or a re-enqueue.

Attempts are counted here, not by arq: arq counts every start (limiter re-defers, crash restarts),
llmqueue counts only provider calls that failed, kept in Redis with the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import litellm
from arq.worker import Retry
from redis.exceptions import RedisError

from llmqueue.cache import ResponseCache, job_cache_key
from llmqueue.errors import ConfigError, JobValidationError, ProviderError, RateLimitedError
from llmqueue.limits.breaker import CircuitBreaker
from llmqueue.limits.feedback import LimitFeedback, LimitListener
from llmqueue.limits.headers import exception_headers, response_headers
from llmqueue.limits.limiter import DEFAULT_PRIORITY, Admission, RateLimiter, Ticket
from llmqueue.limits.routing import Candidate, Deployments, fallback_model, next_fallback
from llmqueue.limits.tokens import (
    NO_ESTIMATE,
    TokenEstimate,
    estimate_split,
    uncached_prompt_tokens,
    usage_tokens,
)
from llmqueue.llm import policy
from llmqueue.llm.answers import missing_answer
from llmqueue.llm.as_sent import request_id_of_response
from llmqueue.llm.backoff import RetryPolicy
from llmqueue.llm.call import call_provider, supports_prompt_caching
from llmqueue.llm.classify import classify, invalid_response, short_message
from llmqueue.llm.request import call_kwargs, job_model
from llmqueue.models import AttemptError, Job, JobResult, ResultStatus, Timings, Usage
from llmqueue.ops.events import EventSink, JobEvent, emit
from llmqueue.queue.ledger import BatchLedger
from llmqueue.queue.payload import invalid_reason
from llmqueue.queue.store import AttemptStart, JobStore
from llmqueue.redaction import redact, redis_error_line
from llmqueue.settings import RESULT_STORE_PATIENCE, LimitConfig, LLMConfig, Settings

logger = logging.getLogger("llmqueue.worker")

# The scope-wide pause after a 429 that came without a retry-after header, in seconds.
DEFAULT_COOLDOWN = 1.0

# Seconds before a job whose result Redis refused is tried again.
REQUEUE_AFTER_STORE_ERROR = 5.0

_STOP_MESSAGES = {
    "cancelled": "the batch was cancelled",
    "budget_exceeded": "the batch reached its cost or token budget",
}


@dataclass
class _Call:
    """One job on its way to the provider: what the runner worked out before calling.

    For a job routed over deployments, ``candidates`` lists them and admission picks ``deployment``
    (whose name is then the ``scope``); otherwise the scope is the model's own.
    """

    job: Job
    llm: LLMConfig
    model: str
    scope: str
    limit: LimitConfig | None
    start: AttemptStart
    estimate: TokenEstimate
    cache_key: str | None = None
    """Set when this call's answer goes to the response cache (the job asked, and missed)."""
    priority: int = DEFAULT_PRIORITY
    ticket: Ticket | None = None
    candidates: list[Candidate] = field(default_factory=list)
    deployment: Candidate | None = None

    @property
    def attempt(self) -> int:
        """This call's number among the job's provider calls (1 for the first)."""
        return len(self.start.failures) + 1

    @property
    def attempt_of_model(self) -> int:
        """This call's number among the calls to its current model (a fallback's retries start afresh)."""
        return self.attempt - self.start.fallback_after

    @property
    def deployment_name(self) -> str | None:
        return self.deployment.scope if self.deployment else None


@dataclass
class JobRunner:
    settings: Settings
    store: JobStore
    limiter: RateLimiter
    worker_id: str
    sinks: Sequence[EventSink] = ()
    deployments: Deployments | None = None
    """The model_list's deployments; jobs for one of its model names are routed over them."""
    in_flight: set[str] = field(default_factory=set)
    """Ids of the jobs this worker is running now (the heartbeat keeps them claimed)."""
    cache: ResponseCache | None = None
    """The response cache, for jobs that ask for it (``job.cache``); None when it is turned off."""
    release_on_finish: bool = False
    """Set by llmqueue's worker: a final result also ends the job's run in the queue (one round trip
    less); arq's own worker (``arq llmqueue.worker.WorkerSettings``) ends it itself."""
    released: set[str] = field(default_factory=set)
    """Jobs whose final result also ended their claim (the worker's ``finish_job`` has nothing to do)."""
    starts: dict[str, AttemptStart] = field(default_factory=dict)
    """What the worker's claim read for jobs about to start (saves ``begin_attempt``'s round trip)."""
    settling: set[asyncio.Task[None]] = field(default_factory=set)
    """Limit feedback still on its way to Redis for jobs that have their results (``settle`` waits)."""
    writes_refused: bool = False
    """True while Redis refuses to store a result this worker paid for: no new call starts meanwhile."""
    ledger: BatchLedger = field(init=False)
    breaker: CircuitBreaker = field(init=False)
    feedback: LimitFeedback = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = BatchLedger(self.store.redis)
        self.breaker = CircuitBreaker(self.store.redis, self.limiter, self.settings.router_settings)
        listeners = [
            cast(LimitListener, s).observe_limits for s in self.sinks if isinstance(s, LimitListener)
        ]
        self.feedback = LimitFeedback(self.limiter, listeners)

    async def handle(self, job_id: str, payload: Any) -> None:
        """Run one start of a job. Raises arq's Retry to re-enqueue it; returns once a result is stored."""
        self.in_flight.add(job_id)
        try:
            await self._attempt(job_id, payload)
        except (Retry, asyncio.CancelledError):
            raise
        except Exception as exc:
            # Whatever went wrong, the job ends with a result: arq would otherwise drop it silently.
            await self._finish_after_error(job_id, payload, exc)
        finally:
            self.in_flight.discard(job_id)

    async def _attempt(self, job_id: str, payload: Any) -> None:
        if self.writes_refused:
            # Redis would not keep what the call brings back: pay for nothing until it does.
            raise Retry(defer=REQUEUE_AFTER_STORE_ERROR)
        try:
            job, llm = self._parse(job_id, payload)
        except (JobValidationError, ConfigError) as exc:
            self.starts.pop(job_id, None)
            await self._finish_unrunnable(job_id, payload, str(exc))
            return
        start = self.starts.pop(job_id, None) or await self.store.begin_attempt(job_id, job.batch_id)
        if start.has_result:
            return  # a restart after a crash that came after the result was stored
        if start.stop_reason is not None:
            await self._finish_stopped(job, start.stop_reason, start)
            return
        model = fallback_model(self.settings.fallbacks, job_model(job, llm), start.fallback)
        candidates = self.deployments.candidates(model) if self.deployments else []
        if candidates:
            scope, limit = model, None  # until admission picks a deployment
            limited = any(self.feedback.needs_estimate(c.scope, c.limit) for c in candidates)
            counted_as = candidates[0].model
        else:
            scope = llm.limit_scope or model
            limit = self.settings.limit_for(scope, llm)
            limited = self.feedback.needs_estimate(scope, limit)
            counted_as = model
        call = _Call(
            job=job,
            llm=llm,
            model=model,
            scope=scope,
            limit=limit,
            start=start,
            estimate=NO_ESTIMATE,
            priority=job.priority,
            candidates=candidates,
        )
        if job.cache and self.cache is not None and await self._answered_from_cache(call):
            return
        try:
            # Everything CPU-bound happens before admission, so the request leaves soon after it is
            # admitted; a job the cache answered needs none of it.
            first = candidates[0].deployment if candidates else None
            caching = supports_prompt_caching(counted_as)
            kwargs = call_kwargs(job, llm, supports_caching=caching, model=model, deployment=first)
            if limited:  # counting tokens costs CPU; only a token limit (configured or learnt) needs it
                call.estimate = estimate_split(job, counted_as, llm.default_completion_tokens)
            await self._admit(call)
            if call.deployment is not None and call.deployment.deployment is not first:
                chosen, caching = call.deployment.deployment, supports_prompt_caching(call.deployment.model)
                kwargs = call_kwargs(job, llm, supports_caching=caching, model=model, deployment=chosen)
            await self._call(call, kwargs)
        finally:
            if call.cache_key is not None and self.cache is not None:
                await self.cache.release(call.cache_key, job.id)

    async def _answered_from_cache(self, call: _Call) -> bool:
        """Finish the job from the cache (True), wait for an identical call in flight, or own the miss."""
        assert self.cache is not None
        lookup = await self.cache.lookup(job_cache_key(call.job, call.llm, call.model), call.job.id)
        if lookup.wait is not None:
            self._emit("deferred", call, wait=lookup.wait, reason="identical_request_in_flight")
            raise Retry(defer=lookup.wait)
        if lookup.response is None:
            call.cache_key = lookup.key
            return False
        result = self._result(call, "succeeded", errors=call.start.failures)
        result.attempts, result.response, result.cost, result.cached = (
            len(call.start.failures),
            lookup.response,
            0.0,
            True,
        )
        await self._finish(result, reply_to=call.job.reply_to, was_retry_waiting=bool(call.start.failures))
        self._emit("cached", call, cost=0.0)
        return True

    async def _admit(self, call: _Call) -> None:
        """Take the call's share of the limiter, waiting in place briefly or re-deferring the job.

        A routed job is admitted by whichever of its deployments can take it soonest. While a scope
        probes for its limits (its first answers are out), the job waits in place for this worker to
        hear one, within the same ``max_inline_wait``.
        """
        max_wait = self.settings.worker.max_inline_wait
        began = time.monotonic()
        admission = await self._acquire(call, max_wait)
        while not admission.admitted and admission.state == "probing":
            left = max_wait - (time.monotonic() - began)
            if admission.wait > left:
                break
            scope = call.candidates[admission.choice].scope if call.candidates else call.scope
            await self.feedback.hear_from(scope, admission.wait)
            admission = await self._acquire(call, max(0.0, max_wait - (time.monotonic() - began)))
        if call.candidates:
            call.deployment = call.candidates[admission.choice]
            call.scope, call.limit = call.deployment.scope, call.deployment.limit
        if not admission.admitted:
            self._emit("deferred", call, wait=admission.wait)
            raise Retry(defer=admission.wait)  # not an attempt: the job frees its slot meanwhile
        call.ticket = admission.ticket
        self.feedback.admitted(call.scope, admission)
        await self.feedback.ran_in_batch(call.job.batch_id, call.scope)
        if admission.wait > 0:
            self._emit("limiter_wait", call, wait=admission.wait)
            await asyncio.sleep(admission.wait)
            # A 429 seen elsewhere while this job slept pauses it too, and voids its reservation.
            pause = await self.limiter.recheck(call.scope, call.ticket)
            if pause > 0:
                await self.feedback.not_sent(call.scope, call.limit, call.ticket)
                # A routed job goes back to be admitted by another deployment, if one can take it sooner.
                defer = 0.0 if len(call.candidates) > 1 else pause
                self._emit("deferred", call, wait=defer, reason="cooldown")
                raise Retry(defer=defer)

    async def _acquire(self, call: _Call, max_wait: float) -> Admission:
        if call.candidates:
            return await self.limiter.acquire_any(
                [(c.scope, c.limit) for c in call.candidates],
                tokens=call.estimate.total,
                max_wait=max_wait,
                priority=call.priority,
                input_tokens=call.estimate.prompt,
                output_tokens=call.estimate.completion,
            )
        return await self.limiter.acquire(
            call.scope,
            call.limit,
            tokens=call.estimate.total,
            max_wait=max_wait,
            priority=call.priority,
            input_tokens=call.estimate.prompt,
            output_tokens=call.estimate.completion,
        )

    async def _call(self, call: _Call, kwargs: dict[str, Any]) -> None:
        job = call.job
        counting = asyncio.ensure_future(
            self.ledger.call_started(job.batch_id, retrying=bool(call.start.failures))
        )
        self._emit("started", call)
        began = time.monotonic()
        timeout = kwargs.get("timeout")
        bound = float(timeout) if isinstance(timeout, int | float) else call.llm.timeout
        try:
            response = await call_provider(job.kind, kwargs, timeout=bound + 5)
        except asyncio.CancelledError:
            # The worker is stopping: arq puts the job back in the queue, and this was no attempt.
            await asyncio.shield(self._interrupted(call, counting))
            raise
        except Exception as exc:
            await counting
            error = classify(exc, self._secrets(call.llm))
            if not error.sent:
                await self.ledger.call_not_sent(job.batch_id)
            if isinstance(error, RateLimitedError):
                await self.feedback.rate_limited(call.scope, call.limit, call.ticket, exception_headers(exc))
            else:
                await self.feedback.failed(call.scope, call.limit, call.ticket)
            latency = time.monotonic() - began
            await self._count_deployment_call(call, error.kind)
            if await self._rerouted(call, error, latency=latency):
                raise Retry(defer=0) from None  # not an attempt: another deployment takes the job
            await self._handle_failure(call, error, latency=latency)
            return
        latency = time.monotonic() - began
        await counting
        problem = missing_answer(job.kind, response)
        if problem is not None:
            await self.feedback.failed(call.scope, call.limit, call.ticket)
            await self._count_deployment_call(call, "invalid_response")
            await self._handle_failure(call, invalid_response(problem), latency=latency)
            return
        result = self._result(call, "succeeded", errors=call.start.failures)
        result.response = _as_dict(response)
        result.request_id = request_id_of_response(response)
        result.usage = _usage(response)
        result.cost = _cost(response)
        # The answer is paid for: what follows the call may not stand between it and its stored result,
        # so bookkeeping that Redis refuses (full, restarting) is logged and skipped, not raised. The
        # batch's counts and the cache are written first (a run ends when its last result is in); the
        # limiter's feedback goes on after the job has ended, off the path of an awaited step.
        async with _best_effort("deployment count"):
            await self._count_deployment_call(call, "ok")
        if call.cache_key is not None and self.cache is not None:
            async with _best_effort("response cache"):
                await self.cache.store(call.cache_key, result.response)
        await self._keep_paid(result, reply_to=job.reply_to)
        self._after_result(
            self.feedback.answered(
                call.scope,
                call.limit,
                call.ticket,
                response_headers(response),
                estimate=call.estimate,
                used=usage_tokens(response),
                used_prompt=uncached_prompt_tokens(response),
                used_completion=usage_tokens(response, "completion_tokens"),
                sets_max_tokens=bool({"max_tokens", "max_completion_tokens"} & set(job.params)),
            )
        )
        usage = result.usage
        self._emit(
            "succeeded",
            call,
            latency=latency,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cost=result.cost,
        )

    async def _handle_failure(self, call: _Call, error: ProviderError, *, latency: float) -> None:
        retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
        if isinstance(error, RateLimitedError):
            await self.limiter.cooldown(
                call.scope,
                retry_after if retry_after is not None else DEFAULT_COOLDOWN,
                longest=call.llm.retry_max_wait,
            )
        policy = RetryPolicy.from_llm(call.llm)
        summary = AttemptError(
            attempt=call.attempt, kind=error.kind, message=error.message, status_code=error.status_code
        )
        details = {"latency": latency, "reason": error.kind, "status_code": error.status_code}
        if error.retryable and policy.allows_retry(call.attempt_of_model):
            summary.retry_in = policy.delay(call.attempt_of_model, retry_after)
            await self.store.record_error(call.job.id, call.job.batch_id, summary)
            self._emit("retrying", call, wait=summary.retry_in, message=error.message, **details)
            raise Retry(defer=summary.retry_in)
        chain = self.settings.fallbacks.get(job_model(call.job, call.llm), [])
        fallback = next_fallback(chain, call.start.fallback) if error.retryable else None
        if fallback is not None:
            summary.retry_in = 0.0
            number = call.start.fallback + 1
            await self.store.record_error(call.job.id, call.job.batch_id, summary, fallback=number)
            message = f"{error.message} (retries spent: falling back to {fallback})"
            self._emit("retrying", call, wait=0.0, message=message, **details)
            raise Retry(defer=0)
        result = self._result(call, "failed", errors=[*call.start.failures, summary])
        result.error_body, result.request_id = error.body, error.request_id
        result.request = call.job.model_dump(mode="json", exclude={"reply_to"})
        await self._keep_paid(result, reply_to=call.job.reply_to)
        self._emit("failed", call, message=error.message, **details)

    async def _rerouted(self, call: _Call, error: ProviderError, *, latency: float) -> bool:
        """After a deployment's fault (connection error, 5xx, timeout, 401/404): take it out when the
        breaker says so, and send the job to another deployment without spending an attempt.

        False when the job cannot be rerouted (no deployment left in service, or it was rerouted as
        often as its model has deployments, twice over): then the failure counts as usual.
        """
        if call.deployment is None:
            return False
        others = [c.scope for c in call.candidates if c is not call.deployment]
        if not await self.breaker.taken_out_with_others_left(call.scope, error.kind, others):
            return False
        if await self.store.count_reroute(call.job.id) > 2 * len(call.candidates):
            return False
        await self.ledger.call_rerouted(call.job.batch_id, retrying=bool(call.start.failures))
        self._emit(
            "rerouted",
            call,
            latency=latency,
            reason=error.kind,
            status_code=error.status_code,
            message=error.message,
        )
        return True

    async def _count_deployment_call(self, call: _Call, outcome: str) -> None:
        if call.deployment is not None and call.job.batch_id is not None:
            await self.ledger.count_deployment_call(call.job.batch_id, call.deployment.scope, outcome)

    async def _interrupted(self, call: _Call, counting: asyncio.Future[None]) -> None:
        await counting
        await self.ledger.call_cut_short(call.job.batch_id, retrying=bool(call.start.failures))
        self._emit("interrupted", call)

    def _after_result(self, feedback: Coroutine[Any, Any, None]) -> None:
        """Send limit feedback once the job is over: a stopping worker cannot cut the job off after its
        result is stored (arq would put it back in the queue), and the caller does not wait for it."""
        task = asyncio.ensure_future(_logged_feedback(feedback))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the feedback still being sent (a worker stopping), then
        give up what is left: the limiter corrects itself from later answers."""
        if not self.settling:
            return
        _, late = await asyncio.wait(set(self.settling), timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _finish(self, result: JobResult, **options: Any) -> None:
        """Store the final result (and, with ``release_on_finish``, end the job's run in the queue)."""
        stored = await self.store.finish(result, release=self.release_on_finish, **options)
        if stored and self.release_on_finish:
            self.released.add(result.job_id)

    def _parse(self, job_id: str, payload: Any) -> tuple[Job, LLMConfig]:
        reason = invalid_reason(payload)
        if reason is not None:
            raise JobValidationError(reason)
        job = Job.parse(payload)
        # Run under another id, the job's result would land where no one waits for it, or pre-empt that job's.
        if job.id != job_id:
            raise JobValidationError(f"payload id {job.id!r} does not match the id it was queued under")
        llm = self.settings.llm_for(job.llm_config)
        refused = policy.worker_refusal(job, self.settings)
        if refused is not None:
            raise JobValidationError(refused)
        return job, llm

    async def _finish_stopped(self, job: Job, reason: str, start: AttemptStart) -> None:
        """A job of a cancelled or spent batch: it ends as cancelled without calling the provider."""
        failures = start.failures
        stop = AttemptError(attempt=len(failures), kind=reason, message=_STOP_MESSAGES.get(reason, reason))
        result = JobResult(
            job_id=job.id,
            batch_id=job.batch_id,
            status="cancelled",
            attempts=len(failures),
            errors=[*failures, stop],
            timings=Timings(queued_at=job.created_at, started_at=start.started_at),
            worker_id=self.worker_id,
            metadata=job.metadata,
            request=job.model_dump(mode="json", exclude={"reply_to"}),
        )
        await self._finish(result, reply_to=job.reply_to, was_retry_waiting=bool(failures))
        emit(
            self.sinks,
            JobEvent(
                "cancelled",
                job.id,
                job.batch_id,
                reason=reason,
                worker_id=self.worker_id,
                priority=job.priority,
            ),
        )

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
        await self._finish(result, reply_to=reply_to if isinstance(reply_to, str) else None)
        emit(
            self.sinks,
            JobEvent(
                "invalid",
                job_id,
                result.batch_id,
                reason="invalid_job",
                message=reason,
                worker_id=self.worker_id,
            ),
        )

    async def _keep_paid(self, result: JobResult, *, reply_to: str | None) -> None:
        """Store the result of a provider call, retrying while Redis refuses it (full, read-only,
        restarting) for up to ``RESULT_STORE_PATIENCE`` seconds: the call was paid for, running the job
        again would pay twice. Meanwhile this worker starts no provider call (``writes_refused``)."""
        deadline = time.monotonic() + RESULT_STORE_PATIENCE
        delay = 0.25
        while True:
            try:
                await self._finish(result, reply_to=reply_to, was_calling=True)
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

    async def _finish_after_error(self, job_id: str, payload: Any, exc: Exception) -> None:
        """End a job that raised on its way from payload to stored result as ``failed`` (``internal_error``).

        If even that result cannot be stored (Redis refuses it), the job is put back in the queue instead.
        """
        secrets = [s for llm in self._all_llm() for s in self._secrets(llm)]
        described = redis_error_line(exc) if isinstance(exc, RedisError) else f"{type(exc).__name__}: {exc}"
        reason = short_message(redact(described, secrets))
        logger.error("job %s failed inside the worker: %s", job_id, reason)
        fields = payload if isinstance(payload, dict) else {}
        batch_id = fields.get("batch_id")
        reply_to = fields.get("reply_to")
        failures: list[AttemptError] = []
        try:
            failures, _queued_at = await self.store.read_waiting(job_id)
            request = Job.model_validate(fields).model_dump(mode="json", exclude={"reply_to"})
        except Exception:  # an invalid job keeps no request; its failures are read when Redis answers
            request = None
        result = JobResult(
            job_id=job_id,
            batch_id=batch_id if isinstance(batch_id, str) else None,
            status="failed",
            attempts=len(failures),
            errors=[*failures, AttemptError(attempt=len(failures), kind="internal_error", message=reason)],
            timings=Timings(queued_at=datetime.now(UTC)),
            worker_id=self.worker_id,
            request=request,
        )
        try:
            await self._finish(result, reply_to=reply_to if isinstance(reply_to, str) else None)
        except RedisError as store_error:
            logger.warning(
                "job %s: its failed result cannot be stored (%s); put back",
                job_id,
                redis_error_line(store_error),
            )
            raise Retry(defer=REQUEUE_AFTER_STORE_ERROR) from None
        emit(
            self.sinks,
            JobEvent(
                "failed",
                job_id,
                result.batch_id,
                reason="internal_error",
                message=reason,
                worker_id=self.worker_id,
            ),
        )

    def _all_llm(self) -> list[LLMConfig]:
        return [self.settings.llm, *(self.settings.llm_for(name) for name in self.settings.llm_groups)]

    def _result(self, call: _Call, status: ResultStatus, *, errors: list[AttemptError]) -> JobResult:
        return JobResult(
            job_id=call.job.id,
            batch_id=call.job.batch_id,
            status=status,
            model=call.model,
            attempts=call.attempt,
            errors=errors,
            timings=Timings(queued_at=call.job.created_at, started_at=call.start.started_at),
            worker_id=self.worker_id,
            metadata=call.job.metadata,
            deployment=call.deployment_name,
        )

    def _emit(self, name: Any, call: _Call, **details: Any) -> None:
        emit(
            self.sinks,
            JobEvent(
                name,
                call.job.id,
                call.job.batch_id,
                model=call.model,
                scope=call.scope,
                deployment=call.deployment_name,
                attempt=call.attempt,
                worker_id=self.worker_id,
                priority=call.job.priority,
                **details,
            ),
        )

    def _secrets(self, llm: LLMConfig) -> list[str]:
        found = [llm.api_key.get_secret_value()] if llm.api_key else []
        return found + (self.deployments.secrets if self.deployments else [])


@contextlib.asynccontextmanager
async def _best_effort(what: str) -> AsyncIterator[None]:
    """Log and skip a Redis error in bookkeeping that must not cost a paid result."""
    try:
        yield
    except RedisError as exc:
        logger.warning("%s skipped: %s", what, redis_error_line(exc))


async def _logged_feedback(feedback: Coroutine[Any, Any, None]) -> None:
    try:
        async with _best_effort("limit feedback"):
            await feedback
    except Exception:  # a bug here must not pass silently, nor end the worker
        logger.exception("limit feedback failed")


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
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        cost = hidden["response_cost"]  # LiteLLM priced the call already (None: it knows no price)
    else:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:
            return None
    return float(cost) if cost else None
