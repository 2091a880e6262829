"""Spending limits every worker shares: USD per UTC day and per UTC month, for all models together and
for one model, kept in Redis (``[budget]``, :class:`~llmqueue.settings.BudgetConfig`).

The rules, in words (those of a batch's ``--max-cost``, :func:`llmqueue.queue.budget.within`, applied to
each limit in force):

- Before a call is sent it reserves its estimated price against every limit that applies to it: the
  day's and the month's, overall and for its model (a fallback's calls count against the fallback's
  model). Once answered it settles: the reservation is given back and its real cost is added.
- A call may start while, for every limit, the period's spend plus the reservations of the calls in
  flight plus its price stays within the limit; a lone call may while the spend is below the limit. So
  a limit is passed by at most what the calls in flight cost above their estimates, or one last call.
- When the calls in flight fill a limit, the job is deferred until they settle (``budget.WAIT_FOR_CALLS``).
- When the spend has reached a limit, the job is **held**: deferred (no worker slot, no call) until the
  period rolls over (00:00 UTC, the 1st of the month), re-checked at least every ``HOLD_RECHECK``
  seconds; it is recorded with its reason (``llmqueue status``, the dashboard). A worker starting with
  limits other than those in force wakes every held job at once, so a raised limit lets them run.
- Once a period's spend passes ``warn_at`` of a limit, a warning is logged (once, by one worker),
  counted in metrics and shown on the dashboard.
- A model without a known price under a limit cannot be capped: its jobs fail with a clear error.

Periods are UTC days and months of ``clock`` (this machine's clock by default; only calls within a
clock skew of midnight can land in the neighbouring period).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Literal, Protocol, runtime_checkable

from arq.worker import Retry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.llm.prices import has_price
from llmqueue.queue.budget import WAIT_FOR_CALLS
from llmqueue.queue.spend_report import Period, Periods, periods
from llmqueue.redaction import redis_error_line
from llmqueue.settings import BudgetConfig

__all__ = ["HOLD_RECHECK", "SpendGate", "SpendListener", "SpendReservation"]

logger = logging.getLogger("llmqueue.spending")

HOLD_RECHECK = 60.0
"""The longest a held job waits before it checks its limit again (seconds)."""
DAY_TTL = 40 * 86400
MONTH_TTL = 400 * 86400
ALL = "*"
"""The model name that stands for all models together (overall limits, metrics labels)."""

_SCRIPT = resources.files("llmqueue.queue").joinpath("lua", "spending.lua").read_text(encoding="utf-8")
_LIMITS: tuple[tuple[Period, bool], ...] = (("day", False), ("day", True), ("month", False), ("month", True))
"""The four limits a call meets, in the script's order: (period, whether it is its model's own)."""
_WORDS = {"day": "daily", "month": "monthly"}


def limits_of(budget: BudgetConfig, model: str) -> list[float | None]:
    """The four limits (USD) a call to ``model`` meets, in the script's order; None where unset."""
    own = budget.models.get(model)
    return [
        budget.daily,
        own.daily if own else None,
        budget.monthly,
        own.monthly if own else None,
    ]


def limit_name(period: Period, model: str | None, limit: float) -> str:
    """``the daily spending limit for gpt-4o ($5)``."""
    whose = f"for {model}" if model else "for all models"
    return f"the {_WORDS[period]} spending limit {whose} (${limit:g})"


def hold_reason(period: Period, model: str | None, limit: float, ends: float) -> str:
    """What a held job shows: which limit, and until when."""
    until = datetime.fromtimestamp(ends, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{limit_name(period, model, limit)} is reached: held until {until} or until the limit is raised"


@runtime_checkable
class SpendListener(Protocol):
    """An event sink that also wants the spend against each limit after each settled call (metrics)."""

    def observe_spend(self, period: str, model: str, spent: float, limit: float, warned: bool) -> None: ...


@dataclass(frozen=True)
class SpendReservation:
    """A call's reservation: what it reserved (USD) for which model in which periods."""

    model: str
    price: float
    periods: Periods


Emit = Callable[..., None]
Wake = Callable[[Sequence[tuple[str, float]]], Awaitable[None]]


class SpendGate:
    """One worker's side of the spending limits in ``budget``; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        budget: BudgetConfig,
        *,
        clock: Callable[[], float] = time.time,
        listeners: Sequence[SpendListener] = (),
    ) -> None:
        self.redis = redis
        self.budget = budget
        self.clock = clock
        self.listeners = list(listeners)
        self._script = redis.register_script(_SCRIPT)

    def applies(self, model: str) -> bool:
        """Whether a limit is in force for calls to ``model``."""
        return self.budget.applies_to(model)

    def refusal(self, model: str, priced_as: str) -> str | None:
        """Why a call to ``model`` (priced as the LiteLLM model ``priced_as``) cannot run under the
        limits: it has no known price; None when it can."""
        if not self.applies(model) or has_price(priced_as):
            return None
        return (
            f"spending limits ([budget]) are set and LiteLLM knows no price for {priced_as!r}, so its "
            "calls cannot be capped: give input_cost_per_token and output_cost_per_token (USD) in [llm] "
            "(or the deployment's model_info), or remove the limits that apply to it"
        )

    async def reserve(
        self, job_id: str, batch_id: str | None, model: str, price: float
    ) -> SpendReservation | tuple[Literal["wait", "held"], float, str]:
        """Reserve ``price`` USD for a call to ``model``: the reservation, or why not and for how long
        (``wait``: calls in flight fill a limit; ``held``: a limit is reached), with the reason."""
        now = self.clock()
        current = periods(now)
        limits = limits_of(self.budget, model)
        holds = []
        for (period, own), limit in zip(_LIMITS, limits, strict=True):
            reason = hold_reason(period, model if own else None, limit or 0.0, current.ends(period))
            holds.append(json.dumps({"batch_id": batch_id, "reason": reason, "since": now}))
        reply = await self._script(
            keys=[keys.spend(f"day:{current.day}"), keys.spend(f"month:{current.month}"), keys.spend_held()],
            args=["reserve", model, price, *_args(limits), DAY_TTL, MONTH_TTL, job_id, *holds],
        )
        answer = reply[0].decode()
        if answer == "ok":
            return SpendReservation(model, price, current)
        period, own = _LIMITS[int(reply[1]) - 1]
        limit, whose = limits[int(reply[1]) - 1] or 0.0, model if own else None
        if answer == "wait":
            return "wait", WAIT_FOR_CALLS, "calls in flight fill " + limit_name(period, whose, limit)
        wait = max(0.01, min(HOLD_RECHECK, current.ends(period) - now))
        return "held", wait, hold_reason(period, whose, limit, current.ends(period))

    async def admit(
        self, job_id: str, batch_id: str | None, model: str, price: float, emit: Emit
    ) -> SpendReservation:
        """:meth:`reserve`; a job that must wait or is held raises arq's ``Retry`` (not an attempt),
        its ``deferred`` step emitted with the reason ``spending_limit`` (or ``spend_in_flight``)."""
        answer = await self.reserve(job_id, batch_id, model, price)
        if isinstance(answer, SpendReservation):
            return answer
        kind, wait, reason = answer
        why = "spending_limit" if kind == "held" else "spend_in_flight"
        emit("deferred", wait=wait, reason=why, message=reason)
        raise Retry(defer=wait)

    async def settle(self, reservation: SpendReservation, cost: float | None) -> None:
        """Give back ``reservation`` and add the call's real ``cost`` (USD; None: nothing was paid)
        to the periods it reserved in. A Redis error is logged: the reservation then stays until the
        period ends."""
        limits = limits_of(self.budget, reservation.model)
        at = reservation.periods
        try:
            reply = await self._script(
                keys=[keys.spend(f"day:{at.day}"), keys.spend(f"month:{at.month}"), keys.spend_held()],
                args=[
                    "settle",
                    reservation.model,
                    reservation.price,
                    *_args(limits),
                    DAY_TTL,
                    MONTH_TTL,
                    cost or 0.0,
                    self.budget.warn_at,
                ],
            )
        except RedisError as exc:
            logger.warning("spend of a call not recorded: %s", redis_error_line(exc))
            return
        spent = [float(value) for value in reply[:4]]
        newly = {int(i) for i in reply[4:]}
        for number, ((period, own), limit) in enumerate(zip(_LIMITS, limits, strict=True), start=1):
            if limit is None:
                continue
            whose = reservation.model if own else ALL
            if number in newly:
                logger.warning(
                    "spending: %s spent $%.4f of the %s limit of $%g (%d%%) in %s (UTC)",
                    "all models" if whose == ALL else whose,
                    spent[number - 1],
                    _WORDS[period],
                    limit,
                    round(100 * spent[number - 1] / limit),
                    at.name(period),
                )
            for listener in self.listeners:
                warned = spent[number - 1] >= self.budget.warn_at * limit
                listener.observe_spend(period, whose, spent[number - 1], limit, warned)

    async def publish(self, wake: Wake) -> None:
        """Record the limits this worker applies; when they differ from those in force, wake every held
        job (a raised limit lets them run now, a lowered one holds them again)."""
        limits = json.dumps(self.budget.model_dump(mode="json"), sort_keys=True)
        before = await self.redis.getset(keys.spend_limits(), limits)
        if before is not None and before.decode() == limits:
            return
        held = await self.redis.hkeys(keys.spend_held())
        if held:
            logger.info("spending limits changed: %d held job(s) check them again now", len(held))
            await wake([(job.decode(), 0.0) for job in held])


def _args(limits: Sequence[float | None]) -> list[str]:
    return ["" if limit is None else repr(limit) for limit in limits]
