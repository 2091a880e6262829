"""How a batch's progress and status look in a terminal (rich)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmqueue.queue.ledger import BatchStatus


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

    def warn(self, message: str) -> None:
        """Print a line above the bar (why the batch is not progressing)."""
        self._progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

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


def status_table(status: BatchStatus) -> Table:
    """The ``llmqueue status`` view of a batch."""
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
    if status.cancel_requested:
        rows.append(("state", "cancelled by request"))
    elif status.budget_exceeded:
        rows.append(("state", "budget reached: no further job starts"))
    for name, value in rows:
        table.add_row(name, value)
    return table


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
