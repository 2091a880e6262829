"""What the page shows, computed from llmqueue's own records: pure functions, no I/O.

Every function takes what llmqueue's public readers return (:class:`BatchStatus`, :class:`ScopeState`,
:class:`WorkerInfo`, :class:`JobResult`) and returns plain JSON-ready dicts; the JSON API serves them
as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llmqueue.limits.view import ScopeState
from llmqueue.models import JobResult
from llmqueue.ops.registry import WorkerInfo
from llmqueue.queue.ledger import BatchStatus

RATE_WINDOW = 60.0
"""Seconds over which a batch's requests and tokens per minute are measured."""


@dataclass(frozen=True)
class Sample:
    """A batch's running totals at one moment (seconds on the hub's clock)."""

    at: float
    requests: int
    tokens: int
    finished: int
    rate_limited: int


def per_minute(samples: Sequence[Sample], *, window: float = RATE_WINDOW) -> tuple[float, float] | None:
    """Requests and tokens per minute over the last ``window`` seconds of ``samples`` (oldest first);
    None until they span at least two seconds."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    first = next((s for s in samples if last.at - s.at <= window), samples[0])
    span = last.at - first.at
    if span < 2.0:
        return None
    return (last.requests - first.requests) * 60 / span, (last.tokens - first.tokens) * 60 / span


def projected_cost(status: BatchStatus) -> float | None:
    """The batch's cost once every job has run, at the cost so far of each job that called the provider;
    None before any did."""
    paid = status.succeeded - status.cached
    if paid <= 0:
        return status.cost if status.done else None
    remaining = max(0, status.total - status.finished)
    return status.cost + status.cost / paid * remaining


def batch_view(status: BatchStatus, samples: Sequence[Sample]) -> dict[str, Any]:
    """A batch as the page shows it: ``llmqueue status --json``'s fields, plus rates and projections."""
    rates = per_minute(samples)
    if rates is None:
        minutes = status.elapsed / 60
        rates = (status.requests / minutes, status.tokens / minutes) if minutes > 0 else (0.0, 0.0)
    state = "running"
    if status.cancel_requested:
        state = "cancelled" if status.done else "cancelling"
    elif status.done:
        state = "done"
    elif status.paused:
        state = "paused"
    if not status.done and status.budget_exceeded:
        state = "over budget"
    return {
        **status.to_json(),
        "state": state,
        "requests_per_minute": round(rates[0], 2),
        "tokens_per_minute": round(rates[1], 1),
        "projected_cost": projected_cost(status),
    }


def scope_view(state: ScopeState, deployments: dict[str, str]) -> dict[str, Any]:
    """A limit scope as ``ScopeState.to_json()`` gives it, with the model a deployment scope serves."""
    return {**state.to_json(), "deployment_of": deployments.get(state.scope)}


def worker_view(worker: WorkerInfo, now: float) -> dict[str, Any]:
    """A registry entry with its heartbeat's age and uptime; ``version`` is None while the worker's
    heartbeat does not record it."""
    return worker.to_json(now)


def failure_groups(results: Iterable[JobResult], *, examples: int = 3) -> list[dict[str, Any]]:
    """The batch's failed and cancelled jobs grouped by the kind of their last error, largest group
    first, each with up to ``examples`` jobs (id, attempts, the error's status code and message)."""
    counts: Counter[str] = Counter()
    shown: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.status not in ("failed", "cancelled"):
            continue
        last = result.errors[-1] if result.errors else None
        reason = last.kind if last is not None else result.status
        counts[reason] += 1
        kept = shown.setdefault(reason, [])
        if len(kept) < examples:
            kept.append(
                {
                    "job_id": result.job_id,
                    "status": result.status,
                    "attempts": result.attempts,
                    "status_code": last.status_code if last else None,
                    "message": last.message if last else "",
                }
            )
    return [
        {"reason": reason, "count": count, "examples": shown[reason]}
        for reason, count in counts.most_common()
    ]


def spend_view(statuses: Iterable[BatchStatus], now: float, spending: Mapping[str, Any]) -> dict[str, Any]:
    """Spend today and this month (UTC): by model against the spending limits, as the workers record it
    under ``[budget]`` (``spending``: :func:`llmqueue.queue.spend_report.read_spending`'s view), with
    the jobs held and a warning per limit past ``warn_at``; and by batch, each batch's running cost.

    Redis keeps a batch's cost and the time it was created, not when each cent was spent, so a batch
    counts in the day and month it was created in.
    """
    today = datetime.fromtimestamp(now, UTC)
    day: dict[str, float] = {}
    month: dict[str, float] = {}
    for status in statuses:
        created = datetime.fromtimestamp(status.created_at, UTC)
        if (created.year, created.month) == (today.year, today.month):
            month[status.batch_id] = status.cost
            if created.day == today.day:
                day[status.batch_id] = status.cost
    return {
        **spending,
        "today": {**spending["today"], "total": sum(day.values()), "by_batch": day},
        "month": {**spending["month"], "total": sum(month.values()), "by_batch": month},
        "warnings": spend_warnings(spending),
        "note": "By model: what the workers recorded under their spending limits ([budget]). By batch: each "
        "batch's running cost, counted in the UTC day and month it was created",
    }


def spend_warnings(spending: Mapping[str, Any]) -> list[str]:
    """A line for each spending limit past its warning share: ``gpt-4o: 85% of the daily limit ($10)``."""
    lines = []
    for key, word in (("today", "daily"), ("month", "monthly")):
        period = spending[key]
        rows = [("all models", period), *period["by_model"].items()]
        for model, row in rows:
            if row["warning"]:
                lines.append(f"{model}: {row['share']:.0%} of the {word} limit (${row['limit']:g})")
    return lines
