"""What a worker tells the shared limiter after each provider answer, and the warnings it gives once.

After a success the provider's rate-limit headers (if any) teach the limiter the scope's limits and what
is left, and the call's reported usage gives back the tokens the provider does not count (see
:meth:`LimitFeedback.answered`). After a 429 the headers are read too, and the call's tokens go back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from llmqueue.limits.headers import parse_rate_limit_headers
from llmqueue.limits.limiter import Admission, Learnt, RateLimiter, Reservation, ScopeState
from llmqueue.limits.tokens import TokenEstimate
from llmqueue.settings import LimitConfig

logger = logging.getLogger("llmqueue.limits")

#: Seconds between two reports of one scope's state to the listeners (metrics).
REPORT_INTERVAL = 5.0


@runtime_checkable
class LimitListener(Protocol):
    """An event sink that also wants each scope's limit state now and then (the worker's metrics)."""

    def observe_limits(self, state: ScopeState) -> None: ...


class LimitFeedback:
    """One worker's side of learning limits: settles reservations, warns once per scope."""

    def __init__(
        self,
        limiter: RateLimiter,
        listeners: Sequence[Callable[[ScopeState], None]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.listeners = list(listeners)
        self._clock = clock
        self._learnt: dict[str, Learnt] = {}
        self._warned: set[tuple[str, str]] = set()
        self._reported: dict[str, float] = {}
        self._batch_scopes: set[tuple[str, str]] = set()
        self._answer_awaited: dict[str, asyncio.Event] = {}
        self._unlimited: set[str] = set()

    async def ran_in_batch(self, batch_id: str | None, scope: str) -> None:
        """Note once that a job of ``batch_id`` ran in ``scope`` (``llmqueue status`` shows its limits)."""
        if batch_id is not None and (batch_id, scope) not in self._batch_scopes:
            await self.limiter.note_batch_scope(batch_id, scope)
            self._batch_scopes.add((batch_id, scope))

    def needs_estimate(self, scope: str, limit: LimitConfig | None) -> bool:
        """Whether the scope may have a token limit, so a job's tokens must be estimated (CPU per job)."""
        if limit is not None and (limit.tpm or limit.itpm or limit.otpm):
            return True
        learnt = self._learnt.get(scope)
        return learnt is None or bool(learnt.tpm or learnt.itpm or learnt.otpm)

    async def hear_from(self, scope: str, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for this worker to hear an answer from ``scope``: a scope
        still probing for its limits admits a couple of calls until an answer tells what they are."""
        event = self._answer_awaited.setdefault(scope, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def admitted(self, scope: str, admission: Admission) -> None:
        """Warn, once per scope, that calls go out with no limit at all."""
        if admission.state != "unlimited":
            self._unlimited.discard(scope)
        else:
            self._unlimited.add(scope)
            self._warn_once(
                scope,
                "unlimited",
                "scope %r runs unlimited: no rpm/tpm is configured for it and the provider's answers "
                "state no rate limit; set LLM_RPM/LLM_TPM or [limits.%r] to limit it",
                scope,
                scope,
            )

    async def answered(
        self,
        reservation: Reservation,
        headers: Mapping[str, str],
        *,
        estimate: TokenEstimate,
        used: int | None,
        sets_max_tokens: bool,
        used_prompt: int | None = None,
        used_completion: int | None = None,
    ) -> None:
        """A successful answer: learn from its headers, and give back the tokens the provider's limiter
        does not keep.

        OpenAI's limiter (and the ones that copy its headers) charges a call that sets ``max_tokens``
        its prompt plus ``max_tokens`` up front, whatever the answer's length: nothing is given back.
        Otherwise (no ``max_tokens``, an Anthropic key, whose output limit counts what was produced, or
        no headers at all) the estimate is reconciled with the reported usage. Input and output tokens
        (Anthropic's ITPM and OTPM) are always reconciled with the prompt and completion tokens reported.
        """
        said = parse_rate_limit_headers(headers, datetime.now(UTC))
        taken = reservation.taken
        give: dict[str, float] = {}
        charged_up_front = sets_max_tokens and said is not None and said.family == "openai"
        if used is not None and taken.get("t") and not charged_up_front:
            give["t"] = estimate.total - used
        if taken.get("i") and used_prompt is not None:
            give["i"] = estimate.prompt - used_prompt
        if taken.get("o") and used_completion is not None:
            give["o"] = estimate.completion - used_completion
        scope = reservation.scope
        if said is None and scope in self._unlimited and scope in self._learnt:
            # Admitted as unlimited and the answer states no limit either: nothing to tell the limiter
            # once this worker has heard what the scope learnt (a self-hosted server's every answer).
            self._heard(scope)
            await self._report(scope)
            return
        learnt = await reservation.answered(said, give)
        await self._learn(scope, reservation.limit, learnt)

    async def rate_limited(self, reservation: Reservation, headers: Mapping[str, str]) -> None:
        """A 429: learn from its headers, if it has any; the call's tokens go back."""
        said = parse_rate_limit_headers(headers, datetime.now(UTC))
        learnt = await reservation.refused(said)
        # The waiters keep to their retry time: the scope's cooldown is set by the caller.
        self._learnt[reservation.scope] = learnt

    async def failed(self, reservation: Reservation) -> None:
        """Another failure: no answer was produced, so what the call took goes back (its request
        stays taken: the provider may have counted it)."""
        self._heard(reservation.scope)
        tokens = {d: q for d, q in reservation.taken.items() if d != "r"}
        if tokens:
            await reservation.limiter.settle(reservation.scope, reservation.limit, give_back=tokens)

    async def not_sent(self, reservation: Reservation) -> None:
        """An admitted call that was not sent after all (a cooldown began while it waited)."""
        await reservation.cancel()

    async def _learn(self, scope: str, limit: LimitConfig | None, learnt: Learnt) -> None:
        self._learnt[scope] = learnt
        self._heard(scope)
        await self._report(scope)
        for name in ("rpm", "tpm", "itpm", "otpm"):
            configured, stated = getattr(limit, name, None), getattr(learnt, name)
            if configured is not None and 0 < stated < configured:
                self._warn_once(
                    scope,
                    f"above-{name}",
                    "scope %r: the configured %s (%g) is above the provider's own limit (%g); the "
                    "provider's is used",
                    scope,
                    name,
                    configured,
                    stated,
                )

    def _heard(self, scope: str) -> None:
        event = self._answer_awaited.pop(scope, None)
        if event is not None:
            event.set()

    async def _report(self, scope: str) -> None:
        if not self.listeners:
            return
        now = self._clock()
        if now - self._reported.get(scope, -REPORT_INTERVAL) < REPORT_INTERVAL:
            return
        self._reported[scope] = now
        state = await self.limiter.inspect(scope)
        for listener in self.listeners:
            listener(state)

    def _warn_once(self, scope: str, what: str, message: str, *args: object) -> None:
        if (scope, what) not in self._warned:
            self._warned.add((scope, what))
            logger.warning(message, *args)
