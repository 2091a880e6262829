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
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Literal, Protocol, runtime_checkable

from arq.worker import Retry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.llm.prices import has_price
from llmqueue.queue.budget import WAIT_FOR_CALLS
from llmqueue.redaction import redis_error_line
from llmqueue.settings import BudgetConfig

__all__ = [
    "HOLD_RECHECK",
    "Periods",
    "SpendGate",
    "SpendListener",
    "SpendReservation",
    "periods",
    "read_spending",
]

logger = logging.getLogger("llmqueue.spending")

HOLD_RECHECK = 60.0
"""The longest a held job waits before it checks its limit again (seconds)."""
DAY_TTL = 40 * 86400
MONTH_TTL = 400 * 86400
ALL = "*"
"""The model name that stands for all models together (overall limits, metrics labels)."""

Period = Literal["day", "month"]
_SCRIPT = resources.files("llmqueue.queue").joinpath("lua", "spending.lua").read_text(encoding="utf-8")
_LIMITS: tuple[tuple[Period, bool], ...] = (("day", False), ("day", True), ("month", False), ("month", True))
"""The four limits a call meets, in the script's order: (period, whether it is its model's own)."""
_WORDS = {"day": "daily", "month": "monthly"}


@dataclass(frozen=True)
class Periods:
    """The UTC day and month ``now`` falls in, and when each ends (Unix seconds)."""

    day: str
    month: str
    day_ends: float
    month_ends: float

    def name(self, period: Period) -> str:
        return self.day if period == "day" else self.month

    def ends(self, period: Period) -> float:
        return self.day_ends if period == "day" else self.month_ends


def periods(now: float) -> Periods:
    """The UTC periods of ``now`` (Unix seconds): ``2026-12-06`` ends at ``2026-12-07 00:00 UTC``."""
    moment = datetime.fromtimestamp(now, UTC)
    day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    return Periods(
        day=f"{moment:%Y-%m-%d}",
        month=f"{moment:%Y-%m}",
        day_ends=(day_start + timedelta(days=1)).timestamp(),
        month_ends=next_month.timestamp(),
    )


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
        return any(limit is not None for limit in limits_of(self.budget, model))

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


async def read_spending(redis: Redis, now: float, *, batch_id: str | None = None) -> dict[str, Any]:
    """What ``llmqueue status`` and the dashboard show: today's and this month's spend (UTC) overall
    and by model, against the limits the workers apply, and the jobs held now (of ``batch_id`` only,
    when given) with their reasons. Held jobs that ended meanwhile (a cancel) are dropped here."""
    current = periods(now)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.spend(f"day:{current.day}"))
        pipe.hgetall(keys.spend(f"month:{current.month}"))
        pipe.get(keys.spend_limits())
        pipe.hgetall(keys.spend_held())
        day, month, raw_limits, raw_held = await pipe.execute()
    budget = BudgetConfig.model_validate(json.loads(raw_limits)) if raw_limits else BudgetConfig()
    held = {job.decode(): json.loads(value) for job, value in raw_held.items()}
    if held:
        async with redis.pipeline(transaction=False) as pipe:
            for job in held:
                pipe.exists(keys.result(job))
            ended = [job for job, done in zip(held, await pipe.execute(), strict=True) if done]
        if ended:
            await redis.hdel(keys.spend_held(), *ended)
            held = {job: info for job, info in held.items() if job not in ended}
    if batch_id is not None:
        held = {job: info for job, info in held.items() if info.get("batch_id") == batch_id}
    return {
        "limits_set": budget.active,
        "warn_at": budget.warn_at,
        "today": _period_view(day, current.day, budget, "daily"),
        "month": _period_view(month, current.month, budget, "monthly"),
        "held": len(held),
        "held_reasons": sorted({str(info.get("reason")) for info in held.values()}),
    }


def _period_view(fields: dict[bytes, bytes], name: str, budget: BudgetConfig, word: str) -> dict[str, Any]:
    values = {k.decode(): float(v) for k, v in fields.items() if not k.startswith(b"warned")}
    models = sorted(
        {k.partition(":")[2] for k in values if ":" in k}
        | {m for m, limit in budget.models.items() if getattr(limit, word) is not None}
    )

    def row(suffix: str, limit: float | None) -> dict[str, Any]:
        spent = max(0.0, values.get("spent" + suffix, 0.0))
        return {
            "spent": spent,
            "in_flight": max(0.0, values.get("reserved" + suffix, 0.0)),
            "limit": limit,
            "share": spent / limit if limit else None,
            "warning": limit is not None and spent >= budget.warn_at * limit,
            "reached": limit is not None and spent >= limit,
        }

    by_model = {}
    for model in models:
        own = budget.models.get(model)
        by_model[model] = row(":" + model, getattr(own, word) if own else None)
    return {"period": name, **row("", getattr(budget, word)), "by_model": by_model}
