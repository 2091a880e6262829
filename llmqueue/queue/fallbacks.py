"""When a job leaves its model for the next of its ``fallbacks`` early: what the runner asks the
circuit breaker and the limiter before a call and after a failed one.

The rules themselves are pure functions in :mod:`llmqueue.llm.failure` (``moves_on_before_call`` and
``decide``'s ``out_for``/``fallback_has_room``); this module reads the state they need, only for
jobs that have a fallback left, so jobs without fallbacks pay no extra round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmqueue.limits.breaker import CircuitBreaker, ServiceState
from llmqueue.limits.routing import Deployments, fallback_model, next_fallback
from llmqueue.llm.failure import moves_on_before_call
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

    def _scopes(self, model: str, llm: LLMConfig) -> list[str]:
        candidates = self._deployments.candidates(model) if self._deployments else []
        return [c.scope for c in candidates] or [llm.limit_scope or model]
