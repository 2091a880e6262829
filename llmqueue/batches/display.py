"""How a batch's progress and status, and the limits, look in a terminal (rich)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmqueue.limits.breaker import DeploymentState
from llmqueue.limits.view import ScopeState
from llmqueue.models import PRIORITIES
from llmqueue.queue.ledger import BatchStatus
from llmqueue.queue.ready import PriorityCounts

if TYPE_CHECKING:  # the estimate module imports LiteLLM, which commands that only show status never need
    from llmqueue.batches.estimate import CostRange, Estimate
    from llmqueue.settings import LimitConfig

_PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}


class BatchProgress:
    """A live progress bar: done/total, failed, 429s, cost and ETA. Use as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("batch", total=None, detail="")
        self._told_budget = False

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def warn(self, message: str) -> None:
        """Print a line above the bar (why the batch is not progressing)."""
        self._progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

    def note(self, message: str) -> None:
        """Print a line above the bar that explains a wait nothing needs to be done about."""
        self._progress.console.print(f"[dim]{escape(message)}[/dim]", highlight=False)

    def update(self, status: BatchStatus) -> None:
        """Show ``status``; the first time it has reached its budget, say so in a line of its own (a
        narrow terminal may cut the bar's text)."""
        if status.budget_exceeded and not self._told_budget:
            self._told_budget = True
            self.warn(
                f"batch {status.batch_id} reached its budget{_budget(status)}: no further job starts; "
                "the jobs not started end as cancelled"
            )
        self._progress.update(
            self._task,
            description=status.batch_id,
            total=status.total or None,
            completed=status.finished,
            detail=progress_detail(status),
        )


def progress_detail(status: BatchStatus) -> str:
    """``failed 2 · 429s 5 · $0.0123 · ETA 12s`` for a batch."""
    # What matters most first: a narrow terminal cuts the end of the line.
    parts = ["[yellow]budget reached[/yellow]"] if status.budget_exceeded else []
    parts.append(f"ok {status.succeeded}")
    if status.cached:
        parts.append(f"cached {status.cached}")
    if status.failed:
        parts.append(f"[red]failed {status.failed}[/red]")
    if status.cancelled:
        parts.append(f"cancelled {status.cancelled}")
    parts.append(f"429s {status.rate_limited}")
    parts.append(f"${status.cost:.4f}")
    if status.paused and not status.done:
        parts.append("[yellow]paused[/yellow]")  # no ETA: nothing starts until it is resumed
    elif not status.done:
        parts.append(f"ETA {format_seconds(status.eta_seconds)}")
    return " · ".join(parts)


def status_table(status: BatchStatus, deployments: Mapping[str, str] | None = None) -> Table:
    """The ``llmqueue status`` view of a batch; ``deployments`` maps a deployment to its current state."""
    table = Table(title=f"batch {status.batch_id}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = [
        ("total", str(status.total)),
        ("queued", str(status.queued)),
        ("running", str(status.running)),
        ("retry-waiting", str(status.retry_waiting)),
        (
            "succeeded",
            str(status.succeeded) + (f" ({status.cached} from the cache)" if status.cached else ""),
        ),
        ("failed", str(status.failed)),
        ("cancelled", str(status.cancelled)),
        ("requests", f"{status.requests} ({status.rate_limited} answered 429)"),
        ("tokens", f"{status.tokens} ({status.prompt_tokens} prompt, {status.completion_tokens} completion)"),
        ("cost", f"${status.cost:.4f}" + _budget(status)),
        ("throughput", f"{status.throughput:.1f} jobs/s"),
        ("elapsed", format_seconds(status.elapsed)),
        ("ETA", "done" if status.done else format_seconds(status.eta_seconds)),
    ]
    if status.deployments:
        rows.append(("deployments", "calls of this batch, and each deployment's state now"))
    for name, counts in status.deployments.items():
        now = (deployments or {}).get(name)
        rows.append(
            (f"  {name}", deployment_split(counts, status.deployments) + (f" · {now}" if now else ""))
        )
    if status.cancel_requested:
        rows.append(("state", "cancelled by request"))
    elif status.paused and not status.done:
        rows.append(("state", f"paused: no call starts until `llmqueue resume {status.batch_id}`"))
    elif status.budget_exceeded:
        rows.append(("state", "budget reached: no further job starts"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def queue_table(queue_name: str, counts: list[PriorityCounts]) -> Table:
    """The ``llmqueue status`` view of the whole queue: jobs per priority, highest first."""
    table = Table(title=f"queue {queue_name}")
    for column in ("priority", "ready", "deferred", "running"):
        table.add_column(column, justify="left" if column == "priority" else "right")
    for row in counts:
        name = _PRIORITY_NAMES.get(row.priority)
        label = f"{row.priority} ({name})" if name else str(row.priority)
        table.add_row(label, str(row.ready), str(row.deferred), str(row.running))
    if not counts:
        table.add_row("-", "0", "0", "0")
    return table


def deployment_split(counts: dict[str, int], every: dict[str, dict[str, int]]) -> str:
    """One deployment's row of ``status``: its calls, their share of all, and how they ended."""
    calls = sum(counts.values())
    total = sum(sum(c.values()) for c in every.values()) or 1
    ended = ", ".join(
        f"{n} {'answered' if kind == 'ok' else kind}"
        for kind, n in sorted(counts.items(), key=_answered_first)
    )
    return f"{calls} calls ({100 * calls / total:.0f}%): {ended}"


def _answered_first(item: tuple[str, int]) -> tuple[bool, str]:
    return item[0] != "ok", item[0]


def format_seconds(seconds: float | None) -> str:
    """``42s``, ``3m07s`` or ``2h05m``; ``?`` for an unknown duration."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _budget(status: BatchStatus) -> str:
    caps = []
    if status.max_cost is not None:
        caps.append(f"max ${status.max_cost:g}")
    if status.max_tokens is not None:
        caps.append(f"max {status.max_tokens} tokens")
    return f" ({', '.join(caps)})" if caps else ""


def estimate_text(estimate: Estimate, source: str, *, max_cost: float | None = None) -> str:
    """The ``--dry-run`` report: a block per model, then the totals when there are several, then how the
    cost compares with ``max_cost`` (``--max-cost``, USD) when one is set."""
    lines = [f"dry run of {source}: {estimate.lines} line(s); nothing queued, no provider called"]
    for model in estimate.models:
        seconds = estimate.seconds(model)
        lines += [
            f"{model.model}: {model.lines} line(s), {model.cache_hits} answered by the cache, "
            f"{model.calls} to call",
            f"  prompt tokens {model.prompt_tokens} · completion tokens up to {model.completion_tokens}",
            f"  cost {format_cost(model.cost)} · via Batch API {format_cost(model.batch_cost)}",
            "  time at the limits: "
            + ("no limit set" if seconds is None else f"{format_seconds(seconds)} ({_limit(model.limit)})"),
        ]
    if len(estimate.models) > 1:
        costs = [m.cost for m in estimate.models]
        batch_costs = [m.batch_cost for m in estimate.models]
        lines += [
            f"total: {estimate.lines} line(s), {sum(m.cache_hits for m in estimate.models)} answered by "
            f"the cache, {sum(m.prompt_tokens for m in estimate.models)} prompt tokens, up to "
            f"{sum(m.completion_tokens for m in estimate.models)} completion tokens",
            f"  cost {_total_cost(costs)} · via Batch API {_total_cost(batch_costs)}",
        ]
    if max_cost is not None:
        lines.append(_against_budget([m.cost for m in estimate.models], max_cost))
    return "\n".join(lines)


def _against_budget(costs: list[CostRange | None], max_cost: float) -> str:
    """How an estimated cost range compares with ``max_cost``."""
    cap = f"--max-cost {format_usd(max_cost)}"
    if any(cost is None for cost in costs):
        return f"{cap}: cannot be compared, a model has no LiteLLM price"
    low = sum(c.low for c in costs if c is not None)
    high = sum(c.high for c in costs if c is not None)
    if low > max_cost:
        return f"{cap}: the estimate is above it (at least {format_usd(low)}); the batch would stop early"
    if high > max_cost:
        return (
            f"{cap}: the estimate may be above it (up to {format_usd(high)}, if the answers run long); "
            "the batch may stop early"
        )
    return f"{cap}: the estimate is within it (at most {format_usd(high)})"


def format_cost(cost: CostRange | None) -> str:
    """``$0.000405 to $0.002205``; ``unknown (no LiteLLM price)`` when LiteLLM has none for the model."""
    if cost is None:
        return "unknown (no LiteLLM price)"
    return f"{format_usd(cost.low)} to {format_usd(cost.high)}"


def format_usd(amount: float) -> str:
    """Dollars with cents above $1, with six decimals below (batch evaluations often cost fractions)."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.6f}"


def _limit(limit: LimitConfig | None) -> str:
    if limit is None:
        return ""
    return _rates(limit.rpm, limit.tpm, limit.itpm, limit.otpm)


def _rates(*rates: float | None) -> str:
    """``600 rpm, 80000 itpm``: the rates given (requests, tokens, input and output tokens per minute)."""
    units = ("rpm", "tpm", "itpm", "otpm")
    return ", ".join(f"{rate:g} {unit}" for rate, unit in zip(rates, units, strict=True) if rate)


def _total_cost(costs: list[CostRange | None]) -> str:
    known = [cost for cost in costs if cost is not None]
    if len(known) < len(costs):
        return "unknown (a model has no LiteLLM price)"
    return f"{format_usd(sum(c.low for c in known))} to {format_usd(sum(c.high for c in known))}"


def deployments_table(states: Sequence[DeploymentState], model_names: Mapping[str, str]) -> Table:
    """The deployments part of ``llmqueue limits``: each one's model name and its state now."""
    table = Table(title="deployments")
    for column in ("deployment", "model name", "state"):
        table.add_column(column)
    for state in states:
        table.add_row(state.name, model_names.get(state.name, ""), state.describe())
    return table


def limits_table(states: Sequence[ScopeState], title: str = "limits") -> Table:
    """The ``llmqueue limits`` view: one row per scope, its limits, their source, level and last minute."""
    table = Table(title=title)
    for column in ("scope", "limit", "source", "level", "cooldown", "last minute"):
        table.add_column(column)
    for state in states:
        if state.state == "limited":
            limit = _rates(state.rpm, state.tpm, state.itpm, state.otpm)
            level = " · ".join(
                f"{current:.0f}/{capacity:.0f} {unit}"
                for rate, current, capacity, unit in (
                    (state.rpm, state.request_level, state.request_capacity, "req"),
                    (state.tpm, state.token_level, state.token_capacity, "tok"),
                    (state.itpm, state.input_level, state.input_capacity, "in"),
                    (state.otpm, state.output_level, state.output_capacity, "out"),
                )
                if rate
            )
        else:
            limit = state.state  # "unlimited", or "probing" until the provider's first answer
            level = "-"
        source = state.source
        if state.others_request_share >= 0.005:
            source += f" (others took {state.others_request_share:.0%} of req)"
        table.add_row(
            state.scope + (" [yellow](paused)[/yellow]" if state.paused else ""),
            limit,
            source,
            level,
            format_seconds(state.cooldown) if state.cooldown > 0 else "-",
            f"{state.requests_last_minute} requests, {state.rate_limited_last_minute} answered 429",
        )
    return table


def spending_table(view: Mapping[str, Any]) -> Table:
    """The spending limits part of ``llmqueue status`` (``queue.spending.read_spending``'s view): today's
    and this month's spend (UTC), overall and by model, against the limits, and the jobs held."""
    table = Table(title="spending limits (UTC)")
    for column in ("period", "model", "spent", "in flight", "limit", "state"):
        table.add_column(column, justify="right" if column in ("spent", "in flight", "limit") else "left")
    for key in ("today", "month"):
        period = view[key]
        rows = [("all models", period), *period["by_model"].items()]
        for model, row in rows:
            if row["limit"] is None and row["spent"] == 0 and row["in_flight"] == 0:
                continue
            table.add_row(
                period["period"],
                model,
                format_usd(row["spent"]),
                format_usd(row["in_flight"]) if row["in_flight"] > 1e-9 else "-",
                "-" if row["limit"] is None else format_usd(row["limit"]),
                _spend_state(row),
            )
    for reason in view["held_reasons"]:
        table.add_row("held", "", "", "", "", f"[yellow]{escape(reason)}[/yellow]")
    if view["held"]:
        table.caption = f"{view['held']} job(s) held by a spending limit or a pause"
    return table


def _spend_state(row: Mapping[str, Any]) -> str:
    if row["reached"]:
        return "[red]reached: jobs are held[/red]"
    if row["warning"]:
        return f"[yellow]{row['share']:.0%} of the limit[/yellow]"
    return "" if row["share"] is None else f"{row['share']:.0%}"
