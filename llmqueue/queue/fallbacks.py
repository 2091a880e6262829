"""When a job leaves its model for the next of its ``fallbacks``: what the runner asks the circuit
breaker and the limiter before a call, and the decision after a failed one.

The rules themselves are pure functions in :mod:`llmqueue.llm.failure` (``moves_on_before_call`` and
``decide``); this module reads the state they need (``out_for``/``fallback_has_room``), only for
jobs that have a fallback left, so jobs without fallbacks pay no extra round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmqueue.errors import ProviderError
from llmqueue.limits.breaker import CircuitBreaker, ServiceState
from llmqueue.limits.routing import Deployments, fallback_model, next_fallback
from llmqueue.llm import failure
from llmqueue.llm.backoff import RetryPolicy
from llmqueue.llm.failure import FailureDecision, moves_on_before_call
from llmqueue.llm.request import job_model
from llmqueue.queue.call import Call
from llmqueue.queue.store import AttemptStart
from llmqueue.settings import LLMConfig


@dataclass(frozen=True)
class AfterFailure:
    """What ``failure.decide`` needs to know about the job's model and its next fallback."""

    out_for: float = 0.0
    fallback_has_room: bool = False


class Fallbacks:
    """Reads the service state of a job's model and of its next fallback, for one worker."""

    def __init__(
        self, fallbacks: Mapping[str, list[str]], breaker: CircuitBreaker, deployments: Deployments | None
    ) -> None:
        self._fallbacks = fallbacks
        self._breaker = breaker
        self._deployments = deployments

    def next_of(self, own_model: str, start: AttemptStart) -> str | None:
        """The fallback a job of ``own_model`` would move on to next, if its chain has one left."""
        return next_fallback(self._fallbacks.get(own_model, []), start.fallback)

    async def skips_current(self, own_model: str, start: AttemptStart, llm: LLMConfig) -> bool:
        """Whether the job should move on to its next fallback before calling its current model."""
        if self.next_of(own_model, start) is None:
            return False
        model = fallback_model(self._fallbacks, own_model, start.fallback)
        state = await self._breaker.service(self._scopes(model, llm))
        following = self.next_of(own_model, start)
        assert following is not None
        room = state.out_for > 0 and (await self._breaker.service(self._scopes(following, llm))).out_for == 0
        return moves_on_before_call(
            taken_out=state.taken_out,
            lately_out=state.lately_out,
            pausing=state.out_for > 0,
            fallback_has_room=room,
            has_fallback=True,
        )

    async def after_failure(
        self, own_model: str, start: AttemptStart, scopes: list[str], llm: LLMConfig
    ) -> AfterFailure:
        """The state of the failed call's model (``scopes``: its deployments) and of its next fallback."""
        following = self.next_of(own_model, start)
        if following is None:
            return AfterFailure()
        model_state = await self._breaker.service(scopes)
        fallback_state: ServiceState = await self._breaker.service(self._scopes(following, llm))
        return AfterFailure(model_state.out_for, fallback_state.out_for == 0)

    async def decide(self, call: Call, error: ProviderError, *, reroutable: bool) -> FailureDecision:
        """What follows ``call``'s failure with ``error`` (:func:`llmqueue.llm.failure.decide`): its
        model's and next fallback's state are read first. ``reroutable``: another deployment can take it."""
        own_model = job_model(call.job, call.llm)
        scopes = [c.scope for c in call.candidates] or [call.scope]
        state = await self.after_failure(own_model, call.start, scopes, call.llm)
        return failure.decide(
            error,
            attempt_of_model=call.attempt_of_model,
            policy=RetryPolicy.from_llm(call.llm),
            fallbacks=self._fallbacks.get(own_model, []),
            moved_on=call.start.fallback,
            reroutable=reroutable,
            out_for=state.out_for,
            fallback_has_room=state.fallback_has_room,
        )

    def _scopes(self, model: str, llm: LLMConfig) -> list[str]:
        candidates = self._deployments.candidates(model) if self._deployments else []
        return [c.scope for c in candidates] or [llm.limit_scope or model]
