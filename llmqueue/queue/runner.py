"""What a worker does with one job: limiter → LiteLLM → reconcile → result, or a re-enqueue.

Attempts are counted here, not by arq: arq counts every start (limiter re-defers, crash restarts),
llmqueue counts only provider calls that failed, kept in Redis with the job.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from arq.worker import Retry
from redis.exceptions import RedisError

from llmqueue.cache import ResponseCache, job_cache_key
from llmqueue.errors import ConfigError, JobValidationError, ProviderError, RateLimitedError
from llmqueue.limits.breaker import CircuitBreaker
from llmqueue.limits.limiter import RateLimiter
from llmqueue.limits.routing import Deployments, fallback_model
from llmqueue.limits.tokens import NO_ESTIMATE, estimate_split
from llmqueue.llm import policy
from llmqueue.llm.answers import missing_answer
from llmqueue.llm.call import call_provider, stream_provider, supports_prompt_caching
from llmqueue.llm.classify import classify, invalid_response, short_message
from llmqueue.llm.prices import register_prices
from llmqueue.llm.request import call_kwargs, job_model
from llmqueue.llm.structured import INVALID_OUTPUT
from llmqueue.models import AttemptError, Job
from llmqueue.ops.events import EventSink, JobEvent, emit
from llmqueue.queue import reask, results
from llmqueue.queue.admission import Admitter
from llmqueue.queue.budget import WAIT_FOR_CALLS, BudgetGate, Reservation, call_price, unpriced_under_budget
from llmqueue.queue.call import Call
from llmqueue.queue.fallbacks import Fallbacks
from llmqueue.queue.job_stream import StreamWriter
from llmqueue.queue.ledger import BatchLedger
from llmqueue.queue.pauses import Pauses, pause_of
from llmqueue.queue.payload import invalid_reason
from llmqueue.queue.reask import Checked
from llmqueue.queue.results import REQUEUE_AFTER_STORE_ERROR, ResultWriter
from llmqueue.queue.settling import Settling, best_effort
from llmqueue.queue.spending import SpendGate, SpendListener, SpendReservation
from llmqueue.queue.store import AttemptStart, JobStore
from llmqueue.redaction import redact, redis_error_line
from llmqueue.settings import LLMConfig, Settings


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
    starts: dict[str, AttemptStart] = field(default_factory=dict)
    """What the worker's claim read for jobs about to start (saves ``begin_attempt``'s round trip)."""
    settling: Settling = field(default_factory=Settling)
    """Limit feedback still on its way to Redis for jobs that have their results (``settle`` waits)."""
    ledger: BatchLedger = field(init=False)
    breaker: CircuitBreaker = field(init=False)
    admitter: Admitter = field(init=False)
    results: ResultWriter = field(init=False)
    fallbacks: Fallbacks = field(init=False)
    budget: BudgetGate = field(init=False)
    spending: SpendGate = field(init=False)
    pauses: Pauses = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = BatchLedger(self.store.redis)
        self.breaker = CircuitBreaker(self.store.redis, self.limiter, self.settings.router_settings)
        self.admitter = Admitter(
            self.limiter, self.sinks, max_inline_wait=self.settings.worker.max_inline_wait, emit=self._emit
        )
        self.results = ResultWriter(self.store, self.worker_id, self.sinks)
        self.fallbacks = Fallbacks(self.settings.fallbacks, self.breaker, self.deployments)
        self.budget = BudgetGate(self.store.redis)
        listeners = [cast(SpendListener, s) for s in self.sinks if isinstance(s, SpendListener)]
        self.spending = SpendGate(self.store.redis, self.settings.budget, listeners=listeners)
        self.pauses = Pauses(self.store.redis, self.store.queue_name)
        register_prices(self.settings)

    @property
    def release_on_finish(self) -> bool:
        """Set by llmqueue's worker: a final result also ends the job's run in the queue (one round trip
        less); arq's own worker (``arq llmqueue.worker.WorkerSettings``) ends it itself."""
        return self.results.release_on_finish

    @release_on_finish.setter
    def release_on_finish(self, value: bool) -> None:
        self.results.release_on_finish = value

    @property
    def released(self) -> set[str]:
        """Jobs whose final result also ended their claim (the worker's ``finish_job`` has nothing to do)."""
        return self.results.released

    @property
    def writes_refused(self) -> bool:
        """True while Redis refuses to store a result this worker paid for: no new call starts meanwhile."""
        return self.results.writes_refused

    async def handle(self, job_id: str, payload: Any) -> None:
        """Run one start of a job. Raises arq's Retry to re-enqueue it; returns once a result is stored."""
        self.in_flight.add(job_id)
        try:
            await self._attempt(job_id, payload)
        except (Retry, asyncio.CancelledError):
            raise
        except Exception as exc:
            # Whatever went wrong, the job ends with a result: arq would otherwise drop it silently.
            secrets = [s for llm in self._all_llm() for s in self._secrets(llm)]
            described = (
                redis_error_line(exc) if isinstance(exc, RedisError) else f"{type(exc).__name__}: {exc}"
            )
            await self.results.internal_error(job_id, payload, short_message(redact(described, secrets)))
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
            await self.results.unrunnable(job_id, payload, str(exc))
            return
        start = self.starts.pop(job_id, None) or await self.store.begin_attempt(job_id, job.batch_id)
        if start.has_result:
            return  # a restart after a crash that came after the result was stored
        if start.stop_reason is not None:
            await self.results.stopped(job, start.stop_reason, start)
            return
        await self._move_on_if_down(job, llm, start)
        model = fallback_model(self.settings.fallbacks, job_model(job, llm), start.fallback)
        candidates = self.deployments.candidates(model) if self.deployments else []
        pause = pause_of(
            start, job.batch_id, model, [c.scope for c in candidates] or [llm.limit_scope or model]
        )
        candidates = [c for c in candidates if c.scope not in start.paused_scopes] or candidates
        if candidates:
            scope, limit = model, None  # until admission picks a deployment
            limited = any(self.admitter.needs_estimate(c.scope, c.limit) for c in candidates)
            counted_as = candidates[0].model
        else:
            scope = llm.limit_scope or model
            limit = self.settings.limit_for(scope, llm)
            limited = self.admitter.needs_estimate(scope, limit)
            counted_as = model
        call = Call(
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
        if pause is not None:  # held (not an attempt) until resumed; goes on if resumed meanwhile
            await self.pauses.hold(job.id, job.batch_id, pause, functools.partial(self._emit, call=call))
        if job.cache and self.cache is not None and await self._answered_from_cache(call):
            return
        spend: SpendReservation | None = None
        try:
            # Everything CPU-bound happens before admission, so the request leaves soon after it is
            # admitted; a job the cache answered needs none of it.
            first = candidates[0].deployment if candidates else None
            caching = supports_prompt_caching(counted_as)
            kwargs = call_kwargs(job, llm, supports_caching=caching, model=model, deployment=first)
            capped = self.spending.applies(model)
            budgeted = start.has_cost_budget or start.has_token_budget
            if limited or budgeted or capped:  # counting tokens costs CPU: only limits and budgets need it
                call.estimate = estimate_split(job, counted_as, llm.default_completion_tokens)
            price = call.price = (
                call_price(counted_as, call.estimate) if start.has_cost_budget or capped else None
            )
            if start.has_cost_budget and job.batch_id is not None and price is None:
                # Refused at submission when the submitter knows no price either; a worker that knows
                # none would send the call uncounted, the budget a silent no-op.
                unpriced = unpriced_under_budget(job.batch_id, counted_as)
                await self.results.unrunnable(job_id, payload, unpriced, request=job)  # retry --failed
                return
            if start.has_cost_budget and job.batch_id is not None and price is not None:
                held = await self.budget.reserve(job.batch_id, price)
                call.reserved = price if held == "ok" else 0.0
                if await self._stopped_by_budget(call, held):
                    return
            if start.has_token_budget and job.batch_id is not None:
                tokens = call.estimate.total
                held = await self.budget.reserve_tokens(job.batch_id, tokens)
                call.reserved_tokens = tokens if held == "ok" else 0
                if await self._stopped_by_budget(call, held):
                    return
            if capped:
                refused = self.spending.refusal(model, counted_as)
                if refused is not None:
                    await self.results.unrunnable(job_id, payload, refused, request=job)
                    return
                emit = functools.partial(self._emit, call=call)
                spend = await self.spending.admit(job.id, job.batch_id, model, price or 0.0, emit)
            try:
                too_large = await self.admitter.admit(call)
            except Retry:
                # Deferred (a 429's pause, the breaker): a job whose fallback takes calls now goes there.
                await self._move_on_if_down(job, llm, start)
                raise
            if too_large is not None:
                await self._failed(call, too_large, latency=0.0)
                return
            if call.deployment is not None and call.deployment.deployment is not first:
                chosen, caching = call.deployment.deployment, supports_prompt_caching(call.deployment.model)
                kwargs = call_kwargs(job, llm, supports_caching=caching, model=model, deployment=chosen)
            await self._call(call, kwargs)
        finally:
            if spend is not None:
                await self.spending.settle(spend, call.cost)
            for reask_spend in call.spend_reasks:  # the re-asks' cost is in the first's settlement
                await self.spending.settle(reask_spend, None)
            if call.reserved and job.batch_id is not None:
                async with best_effort("budget reservation"):  # the others are given back all the same
                    await self.budget.give_back(job.batch_id, call.reserved)
            if call.reserved_tokens and job.batch_id is not None:
                async with best_effort("token budget reservation"):
                    await self.budget.give_back_tokens(job.batch_id, call.reserved_tokens)
            if call.cache_key is not None and self.cache is not None:
                await self.cache.release(call.cache_key, job.id)

    async def _stopped_by_budget(self, call: Call, held: Reservation) -> bool:
        """Act on a budget reservation's answer: calls in flight that fill the budget re-defer the job
        until they settle (not an attempt, arq's ``Retry``); a spent one ends it cancelled (True)."""
        if held == "wait":
            self._emit("deferred", call, wait=WAIT_FOR_CALLS, reason="budget_in_flight")
            raise Retry(defer=WAIT_FOR_CALLS)
        if held == "spent":
            await self.results.stopped(call.job, "budget_exceeded", call.start)
            return True
        return False

    async def _answered_from_cache(self, call: Call) -> bool:
        """Finish the job from the cache (True), wait for an identical call in flight, or own the miss."""
        assert self.cache is not None
        lookup = await self.cache.lookup(job_cache_key(call.job, call.llm, call.model), call.job.id)
        if lookup.wait is not None:
            self._emit("deferred", call, wait=lookup.wait, reason="identical_request_in_flight")
            raise Retry(defer=lookup.wait)
        if lookup.response is None:
            call.cache_key = lookup.key
            return False
        result = results.from_cache(call, lookup.response, worker_id=self.worker_id)
        await self.results.finish(
            result, reply_to=call.job.reply_to, was_retry_waiting=bool(call.start.failures)
        )
        self._emit("cached", call, cost=0.0)
        return True

    async def _call(self, call: Call, kwargs: dict[str, Any]) -> None:
        job = call.job
        counting = asyncio.ensure_future(
            self.ledger.call_started(job.batch_id, retrying=bool(call.start.failures))
        )
        self._emit("started", call)
        began = time.monotonic()
        timeout = kwargs.get("timeout")
        bound = float(timeout) if isinstance(timeout, int | float) else call.llm.timeout
        try:
            if job.kind == "chat" and job.params.get("stream") is True:
                writer = StreamWriter(self.store.redis, job.id, ttl=self.settings.worker.result_ttl)
                response = await writer.write(functools.partial(stream_provider, kwargs, bound + 5))
            else:
                response = await call_provider(job.kind, kwargs, timeout=bound + 5)
            checked = await reask.until_valid(
                call,
                kwargs,
                response,
                admitter=self.admitter,
                after_result=self.settling.add,
                timeout=bound + 5,
                may_reask=functools.partial(self._may_reask, call),
            )
            if checked is not None:
                response = checked.last
        except asyncio.CancelledError:
            # The worker is stopping: arq puts the job back in the queue, and this was no attempt.
            await asyncio.shield(self._interrupted(call, counting))
            raise
        except Retry:  # a re-ask the limiter deferred: the job starts over later
            await asyncio.shield(self._interrupted(call, counting))
            raise
        except Exception as exc:
            await counting
            error = classify(exc, self._secrets(call.llm))
            if not error.sent:
                await self.ledger.call_not_sent(job.batch_id)
            if isinstance(error, RateLimitedError):
                await self.admitter.rate_limited(call, exc)
            else:
                await self.admitter.failed(call)
            latency = time.monotonic() - began
            await self._count_deployment_call(call, error.kind)
            reroutable = await self._reroutable(call, error)
            await self._failed(call, error, latency=latency, reroutable=reroutable)
            return
        latency = time.monotonic() - began
        await counting
        problem = missing_answer(job.kind, response)
        if problem is not None:
            await self.admitter.failed(call)
            await self._count_deployment_call(call, "invalid_response")
            await self._failed(call, invalid_response(problem), latency=latency)
            return
        if checked is not None and not checked.met:
            await self._invalid_output(call, checked, latency=latency)
            return
        result = results.succeeded(call, response, worker_id=self.worker_id)
        if checked is not None:
            reask.count_reasks(result, checked)
        call.cost = result.cost
        # The answer is paid for: what follows the call may not stand between it and its stored result,
        # so bookkeeping that Redis refuses (full, restarting) is logged and skipped, not raised. The
        # batch's counts and the cache are written first (a run ends when its last result is in); the
        # limiter's feedback goes on after the job has ended, off the path of an awaited step.
        async with best_effort("deployment count"):
            await self._count_deployment_call(call, "ok")
        if call.cache_key is not None and self.cache is not None and result.response is not None:
            async with best_effort("response cache"):
                await self.cache.store(call.cache_key, result.response)
        await self.results.keep_paid(result, reply_to=job.reply_to)
        self.settling.add(self.admitter.answered(call, response))
        usage = result.usage
        self._emit(
            "succeeded",
            call,
            latency=latency,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cost=result.cost,
        )

    async def _may_reask(self, call: Call, paid: float, used: int) -> str | None:
        """Why ``call``'s job may not be asked again: its batch's budget or a spending limit has no room
        for one more request (the answers so far cost ``paid`` and used ``used`` tokens). What a re-ask
        reserves is on ``call``."""
        job, price = call.job, call.price
        if call.start.has_token_budget and job.batch_id is not None:
            tokens = call.estimate.total
            answer = await self.budget.reserve_tokens(
                job.batch_id, tokens, paid=used, held=call.reserved_tokens
            )
            if answer != "ok":
                held = "is spent" if answer == "spent" else "is held by the calls in flight"
                return f"not asked again for a valid answer: the batch's budget (max_tokens) {held}"
            call.reserved_tokens += tokens
        if price is None:  # no budget applies, or no price known (a spending limit refused it before)
            return None
        if call.start.has_cost_budget and job.batch_id is not None:
            answer = await self.budget.reserve(job.batch_id, price, paid=paid, held=call.reserved)
            if answer != "ok":
                held = "is spent" if answer == "spent" else "is held by the calls in flight"
                return f"not asked again for a valid answer: the batch's budget (max_cost) {held}"
            call.reserved += price
        if self.spending.applies(call.model):
            spend = await self.spending.reserve(job.id, job.batch_id, call.model, price)
            if not isinstance(spend, SpendReservation):
                return f"not asked again for a valid answer: {spend[2]}"
            call.spend_reasks.append(spend)
        return None

    async def _invalid_output(self, call: Call, checked: Checked, *, latency: float) -> None:
        """No answer met the job's response_format (or the limiter refused a re-ask outright): the job
        fails (:func:`llmqueue.queue.reask.invalid_output`)."""
        self.settling.add(self.admitter.answered(call, checked.last))
        async with best_effort("deployment count"):
            await self._count_deployment_call(call, INVALID_OUTPUT)
        result = reask.invalid_output(call, checked, worker_id=self.worker_id)
        call.cost = result.cost
        await self.results.keep_paid(result, reply_to=call.job.reply_to)
        error = result.errors[-1]
        self._emit(
            "failed", call, latency=latency, reason=error.kind, message=error.message, cost=result.cost
        )

    async def _failed(
        self, call: Call, error: ProviderError, *, latency: float, reroutable: bool = False
    ) -> None:
        """Carry out what the failure policy (:func:`llmqueue.llm.failure.decide`) says for ``call``:
        pause the scope, then reroute, retry or fall back (re-enqueue with arq's Retry), or fail the job."""
        decision = await self.fallbacks.decide(call, error, reroutable=reroutable)
        if decision.scope_pause is not None:
            await self.admitter.cooldown(call.scope, decision.scope_pause, longest=decision.delay)
        if decision.action == "reroute":
            await self.ledger.call_rerouted(call.job.batch_id, retrying=bool(call.start.failures))
            self._emit(
                "rerouted",
                call,
                latency=latency,
                reason=error.kind,
                status_code=error.status_code,
                message=error.message,
            )
            raise Retry(defer=0) from None  # not an attempt: another deployment takes the job
        summary = AttemptError(
            attempt=call.attempt, kind=error.kind, message=error.message, status_code=error.status_code
        )
        details = {"latency": latency, "reason": error.kind, "status_code": error.status_code}
        if decision.action == "retry":
            summary.retry_in = decision.delay
            await self.store.record_error(call.job.id, call.job.batch_id, summary)
            self._emit("retrying", call, wait=summary.retry_in, message=error.message, **details)
            raise Retry(defer=summary.retry_in)
        if decision.action == "fallback":
            summary.retry_in = 0.0
            await self.store.record_error(
                call.job.id, call.job.batch_id, summary, fallback=decision.fallback_number
            )
            message = f"{error.message} (falling back to {decision.fallback})"
            self._emit("retrying", call, wait=0.0, message=message, **details)
            raise Retry(defer=0)
        result = results.failed(call, summary, worker_id=self.worker_id)
        result.error_body, result.request_id = error.body, error.request_id
        await self.results.keep_paid(result, reply_to=call.job.reply_to)
        self._emit("failed", call, message=error.message, **details)

    async def _move_on_if_down(self, job: Job, llm: LLMConfig, start: AttemptStart) -> None:
        """When the job's model is known to be down, the job goes to its next fallback at once (arq's
        Retry), no call made."""
        if not await self.fallbacks.skips_current(job_model(job, llm), start, llm):
            return
        following = self.fallbacks.next_of(job_model(job, llm), start)
        await self.store.move_to_fallback(job.id, start.fallback + 1, after=len(start.failures))
        emit(
            self.sinks,
            JobEvent(
                "rerouted",
                job.id,
                job.batch_id,
                model=fallback_model(self.settings.fallbacks, job_model(job, llm), start.fallback),
                reason="model_down",
                message=f"its model is out of service: falling back to {following}",
                worker_id=self.worker_id,
                priority=job.priority,
            ),
        )
        raise Retry(defer=0)

    async def _reroutable(self, call: Call, error: ProviderError) -> bool:
        """After a deployment's fault (connection error, 5xx, timeout, 401/404): whether the breaker took
        it out with another deployment left, so the job can go to that one without spending an attempt.

        False when the job cannot be rerouted (no deployment left in service, or it was rerouted as
        often as its model has deployments, twice over): then the failure counts as usual.
        """
        if call.deployment is None:
            return False
        others = [c.scope for c in call.candidates if c is not call.deployment]
        if not await self.breaker.taken_out_with_others_left(call.scope, error.kind, others):
            return False
        return await self.store.count_reroute(call.job.id) <= 2 * len(call.candidates)

    async def _count_deployment_call(self, call: Call, outcome: str) -> None:
        if call.deployment is not None and call.job.batch_id is not None:
            await self.ledger.count_deployment_call(call.job.batch_id, call.deployment.scope, outcome)

    async def _interrupted(self, call: Call, counting: asyncio.Future[None]) -> None:
        await counting
        await self.ledger.call_cut_short(call.job.batch_id, retrying=bool(call.start.failures))
        self._emit("interrupted", call)

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the limit feedback still being sent (a worker stopping)."""
        await self.settling.settle(timeout)

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

    def _all_llm(self) -> list[LLMConfig]:
        return [self.settings.llm, *(self.settings.llm_for(name) for name in self.settings.llm_groups)]

    def _emit(self, name: Any, call: Call, **details: Any) -> None:
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
