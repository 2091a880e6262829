"""The runner's one door to the shared limiter: admission before a call, and what the limiter hears after.

:class:`Admitter` takes a call's share of the limiter (:meth:`Admitter.admit`): it waits in place up to
the worker's ``max_inline_wait`` (longer waits re-defer the job with arq's ``Retry``, which is not an
attempt), re-checks after that wait that no 429 paused the scope meanwhile, and for a job routed over
deployments picks the one that can take it soonest. After the call it passes on what the provider said
(:meth:`answered`, :meth:`rate_limited`, :meth:`failed`) and pauses a scope after a 429
(:meth:`cooldown`). Nothing else in the runner talks to the limiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from arq.worker import Retry

from llmqueue.errors import PermanentProviderError
from llmqueue.limits.feedback import LimitFeedback
from llmqueue.limits.headers import exception_headers, response_headers
from llmqueue.limits.limiter import Admission, RateLimiter, Reservation
from llmqueue.limits.tokens import CompletionSizes, uncached_prompt_tokens, usage_tokens
from llmqueue.ops.events import EventSink, LimitListener
from llmqueue.queue.call import Call, Emit
from llmqueue.settings import LimitConfig


class Admitter:
    """Admits calls through ``limiter`` and reports their answers to it, for one worker.

    ``max_inline_wait`` (seconds) is the longest a job waits in place for its admission; ``emit``
    records the ``deferred`` and ``limiter_wait`` steps; event sinks that are ``LimitListener`` hear
    each scope's limit state now and then.
    """

    def __init__(
        self, limiter: RateLimiter, sinks: Sequence[EventSink], *, max_inline_wait: float, emit: Emit
    ) -> None:
        self.limiter = limiter
        self.max_inline_wait = max_inline_wait
        self._emit = emit
        listeners = [cast(LimitListener, s).observe_limits for s in sinks if isinstance(s, LimitListener)]
        self.feedback = LimitFeedback(limiter, listeners)
        self.completions = CompletionSizes()

    def needs_estimate(self, scope: str, limit: LimitConfig | None) -> bool:
        """Whether the scope may have a token limit, so a job's tokens must be estimated (CPU per job)."""
        return self.feedback.needs_estimate(scope, limit)

    async def admit(self, call: Call) -> PermanentProviderError | None:
        """Take the call's share of the limiter, waiting in place briefly or re-deferring the job.

        On return the call is admitted: ``call.reservation`` is what it took and, for a routed job,
        ``call.deployment`` (with ``call.scope`` and ``call.limit``) the deployment that took it.
        Returns the error to fail the job with when no wait can admit it (larger than a minute's
        limit). Raises arq's ``Retry(defer=seconds)`` when the job must wait longer than
        ``max_inline_wait`` (it is parked: capacity given back brings it sooner), or a 429 paused the
        scope, or a limit was learnt, while it waited.

        A routed job is admitted by whichever of its deployments can take it soonest. While a scope
        probes for its limits (its first answers are out), the job waits in place for this worker to
        hear one, within the same ``max_inline_wait``.
        """
        max_wait = self.max_inline_wait
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
        if admission.too_large is not None:
            message = f"request too large for {call.scope!r}: {admission.too_large}"
            return PermanentProviderError(message, kind="request_too_large")
        if not admission.admitted or admission.reservation is None:
            self._emit("deferred", call, wait=admission.wait)
            raise Retry(defer=admission.wait)  # not an attempt: the job frees its slot meanwhile
        call.reservation = admission.reservation
        self.feedback.admitted(call.scope, admission)
        await self.feedback.ran_in_batch(call.job.batch_id, call.scope)
        if admission.wait > 0:
            self._emit("limiter_wait", call, wait=admission.wait)
            await asyncio.sleep(admission.wait)
            # A 429 seen elsewhere while this job slept pauses it too, and voids its reservation, as
            # does a limit learnt meanwhile.
            pause = await call.reservation.pause_before_sending()
            if pause > 0:
                await call.reservation.cancel()  # not sent: everything it took goes back
                # A routed job goes back to be admitted by another deployment, if one can take it sooner.
                defer = 0.0 if len(call.candidates) > 1 else pause
                self._emit("deferred", call, wait=defer, reason="cooldown")
                raise Retry(defer=defer)
        return None

    async def _acquire(self, call: Call, max_wait: float) -> Admission:
        candidates = [(c.scope, c.limit) for c in call.candidates] or [(call.scope, call.limit)]
        tokens = call.estimate.total
        if not _sets_max_tokens(call):  # the total is reserved at what answers have lately used
            tokens = call.estimate.prompt + self.completions.allowance(call.model, call.estimate.completion)
        return await self.limiter.acquire(
            candidates,
            tokens=tokens,
            max_wait=max_wait,
            priority=call.priority,
            input_tokens=call.estimate.prompt,
            output_tokens=call.estimate.completion,
            job_id=call.job.id,
        )

    def answered(self, call: Call, response: Any) -> Coroutine[Any, Any, None]:
        """The report of an admitted call's answer (headers, usage), for the caller to send when it may."""
        used_completion = usage_tokens(response, "completion_tokens")
        sets_max_tokens = _sets_max_tokens(call)
        if used_completion is not None and not sets_max_tokens:
            self.completions.observe(call.model, used_completion)
        return self.feedback.answered(
            _reservation(call),
            response_headers(response),
            used=usage_tokens(response),
            used_prompt=uncached_prompt_tokens(response),
            used_completion=used_completion,
            sets_max_tokens=sets_max_tokens,
        )

    async def rate_limited(self, call: Call, exc: BaseException) -> None:
        """An admitted call answered 429 (``exc`` is LiteLLM's exception, whose headers are read)."""
        await self.feedback.rate_limited(_reservation(call), exception_headers(exc))

    async def failed(self, call: Call) -> None:
        """An admitted call failed otherwise (no answer produced): its tokens are given back."""
        await self.feedback.failed(_reservation(call))

    async def cooldown(self, scope: str, seconds: float, *, longest: float) -> None:
        """Pause every call to ``scope`` for ``seconds`` (a 429 seen here). 429s that keep coming
        double the pause, up to ``longest``: the delay of the job that drew this one, so its own retry
        schedule is never stretched by its scope's pause."""
        await self.limiter.cooldown(scope, seconds, longest=max(seconds, longest))


def _sets_max_tokens(call: Call) -> bool:
    return bool({"max_tokens", "max_completion_tokens"} & set(call.job.params))


def _reservation(call: Call) -> Reservation:
    """An admitted call's reservation (only admitted calls reach the provider)."""
    if call.reservation is None:
        raise RuntimeError(f"job {call.job.id}: the provider was called without an admission")
    return call.reservation
