"""What the spending limits have recorded in Redis, read for ``llmqueue status`` and the dashboard, and
the UTC periods they count in (:mod:`llmqueue.queue.spending` writes them). Imports no LiteLLM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.settings import BudgetConfig

__all__ = ["Period", "Periods", "periods", "read_spending"]

Period = Literal["day", "month"]


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
