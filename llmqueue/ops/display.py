"""How a batch's progress and status, and the limits, look in a terminal (rich)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmqueue.batches.ledger import BatchStatus
from llmqueue.limits.breaker import DeploymentState
from llmqueue.limits.limiter import ScopeState


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

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, status: BatchStatus) -> None:
        self._progress.update(
            self._task,
            description=status.batch_id,
            total=status.total or None,
            completed=status.finished,
            detail=progress_detail(status),
        )


def progress_detail(status: BatchStatus) -> str:
    """``failed 2 · 429s 5 · $0.0123 · ETA 12s`` for a batch."""
    parts = [f"ok {status.succeeded}"]
    if status.failed:
        parts.append(f"[red]failed {status.failed}[/red]")
    if status.cancelled:
        parts.append(f"cancelled {status.cancelled}")
    parts.append(f"429s {status.rate_limited}")
    parts.append(f"${status.cost:.4f}")
    if status.budget_exceeded:
        parts.append("[yellow]budget reached[/yellow]")
    if not status.done:
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
        ("succeeded", str(status.succeeded)),
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
    elif status.budget_exceeded:
        rows.append(("state", "budget reached: no further job starts"))
    for name, value in rows:
        table.add_row(name, value)
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
            parts = []
            if state.rpm:
                parts.append(f"{state.rpm:g} rpm")
            if state.tpm:
                parts.append(f"{state.tpm:g} tpm")
            limit = ", ".join(parts)
            level = " · ".join(
                f"{current:.0f}/{capacity:.0f} {unit}"
                for rate, current, capacity, unit in (
                    (state.rpm, state.request_level, state.request_capacity, "req"),
                    (state.tpm, state.token_level, state.token_capacity, "tok"),
                )
                if rate
            )
        else:
            limit = state.state  # "unlimited", or "probing" until the provider's first answer
            level = "-"
        factors = [
            f"{name} x{factor:.2f}"
            for name, factor in (("req", state.request_factor), ("tok", state.token_factor))
            if factor > 1.005
        ]
        source = state.source + (f" ({', '.join(factors)})" if factors else "")
        table.add_row(
            state.scope,
            limit,
            source,
            level,
            format_seconds(state.cooldown) if state.cooldown > 0 else "-",
            f"{state.requests_last_minute} requests, {state.rate_limited_last_minute} answered 429",
        )
    return table
