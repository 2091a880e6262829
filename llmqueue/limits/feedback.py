"""What a worker tells the shared limiter after each provider answer, and the warnings it gives once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from llmqueue.limits.headers import parse_rate_limit_headers
from llmqueue.limits.limiter import Admission, Learnt, RateLimiter, Reservation
from llmqueue.limits.view import ScopeState, note_batch_scope
from llmqueue.settings import LimitConfig

logger = logging.getLogger("llmqueue.limits")

#: Seconds between two reports of one scope's state to the listeners (metrics).
REPORT_INTERVAL = 5.0


class LimitFeedback:
    """One worker's side of learning limits: settles reservations, warns once per scope."""

    def __init__(self, limiter: RateLimiter, listeners: Sequence[Callable[[ScopeState], None]] = ()) -> None:
        self.limiter = limiter
        self.listeners = list(listeners)
        self._learnt: dict[str, Learnt] = {}
        self._warned: set[tuple[str, str]] = set()
        self._reported: dict[str, float] = {}
        self._batch_scopes: set[tuple[str, str]] = set()
        self._answer_awaited: dict[str, asyncio.Event] = {}
        self._unlimited: set[str] = set()

    async def ran_in_batch(self, batch_id: str | None, scope: str) -> None:
        """Note once that a job of ``batch_id`` ran in ``scope`` (``llmqueue status`` shows its limits)."""
        if batch_id is not None and (batch_id, scope) not in self._batch_scopes:
            await note_batch_scope(self.limiter.redis, batch_id, scope)
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
            return
        self._unlimited.add(scope)
        why = "no rpm/tpm is configured for it and the provider's answers state no rate limit"
        fix = f"set LLM_RPM/LLM_TPM or [limits.{scope!r}] to limit it"
        self._warn_once((scope, "unlimited"), f"scope {scope!r} runs unlimited: {why}; {fix}")

    async def answered(
        self,
        reservation: Reservation,
        headers: Mapping[str, str],
        *,
        used: int | None,
        sets_max_tokens: bool,
        used_prompt: int | None = None,
        used_completion: int | None = None,
    ) -> None:
        """A successful answer: learn from its headers and give back the tokens the provider does not
        count. OpenAI's limiter (and its copies) charges a call that sets ``max_tokens`` its prompt plus
        ``max_tokens`` up front: nothing is given back then. Input and output tokens always are."""
        said = parse_rate_limit_headers(headers, datetime.now(UTC))
        charged_up_front = sets_max_tokens and said is not None and said.family == "openai"
        used_by = {"t": None if charged_up_front else used, "i": used_prompt, "o": used_completion}
        taken = reservation.taken
        give = {d: taken[d] - u for d, u in used_by.items() if u is not None and taken.get(d)}
        scope, limit = reservation.scope, reservation.limit
        # Admitted as unlimited and the answer states no limit either: nothing to tell the limiter once
        # this worker has heard what the scope learnt (a self-hosted server's every answer).
        if not (said is None and scope in self._unlimited and scope in self._learnt):
            learnt = self._learnt[scope] = await reservation.answered(said, give)
            for name in ("rpm", "tpm", "itpm", "otpm"):
                configured, stated = getattr(limit, name, None), getattr(learnt, name)
                if configured is not None and 0 < stated < configured:
                    above = f"{name} ({configured:g}) is above the provider's own limit ({stated:g})"
                    warning = f"scope {scope!r}: the configured {above}; the provider's is used"
                    self._warn_once((scope, name), warning)
        self._heard(scope)
        await self._report(scope)

    async def rate_limited(self, reservation: Reservation, headers: Mapping[str, str]) -> None:
        """A 429: learn from its headers, if any; its tokens go back (the caller pauses the scope)."""
        said = parse_rate_limit_headers(headers, datetime.now(UTC))
        self._learnt[reservation.scope] = await reservation.refused(said)

    async def failed(self, reservation: Reservation) -> None:
        """Another failure: no answer was produced (see :meth:`Reservation.failed`)."""
        self._heard(reservation.scope)
        await reservation.failed()

    def _heard(self, scope: str) -> None:
        event = self._answer_awaited.pop(scope, None)
        if event is not None:
            event.set()

    async def _report(self, scope: str) -> None:
        now = time.monotonic()
        if not self.listeners or now - self._reported.get(scope, -REPORT_INTERVAL) < REPORT_INTERVAL:
            return
        self._reported[scope] = now
        state = await self.limiter.inspect(scope)
        for listener in self.listeners:
            listener(state)

    def _warn_once(self, what: tuple[str, str], message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning("%s", message)
