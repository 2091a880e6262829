"""``llmqueue pause`` and ``llmqueue resume``: hold a batch's or a limit scope's jobs, and let them go."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmqueue.cli.common import ConfigOption, RedisOption, app, console, settings_from, with_batches
from llmqueue.errors import LLMQueueError

PausedBatch = Annotated[str | None, typer.Argument(help="The batch id (printed by submit/run).")]
ScopeOption = Annotated[
    str | None,
    typer.Option(
        "--scope", help="A limit scope as `llmqueue limits` shows it: a model, deployment or limit_scope."
    ),
]


def _target(batch: str | None, scope: str | None, verb: str) -> tuple[str, str]:
    if (batch is None) == (scope is None):
        raise LLMQueueError(f"say what to {verb}: llmqueue {verb} BATCH, or llmqueue {verb} --scope NAME")
    return ("batch", batch) if batch is not None else ("scope", scope or "")


@app.command()
def pause(
    batch: PausedBatch = None,
    scope: ScopeOption = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Pause a batch, or every call to a limit scope: workers start no new call for its jobs (calls in
    flight finish); its jobs stay queued, held without a worker slot, an attempt or a cost, until
    `llmqueue resume`. Every worker honours it as it takes its next job."""
    kind, name = _target(batch, scope, "pause")
    settings = settings_from(config, redis_url)

    async def go(batches: Any) -> None:
        if kind == "batch":
            if (await batches.status(name)).done:
                raise LLMQueueError(f"batch {name} has finished: there is nothing left to pause")
            await batches.pause(name)
        else:
            await batches.pauses.pause_scope(name)

    with_batches(settings, go)
    console.print(
        f"{kind} {name} paused: no new call starts until `llmqueue resume" + _flag(kind, name) + "`"
    )


@app.command()
def resume(
    batch: PausedBatch = None,
    scope: ScopeOption = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Resume a paused batch or limit scope: the jobs it held start now, each once."""
    kind, name = _target(batch, scope, "resume")
    settings = settings_from(config, redis_url)

    async def go(batches: Any) -> int | None:
        if kind == "batch":
            if not (await batches.status(name)).paused:
                return None
            woken: int = await batches.resume(name)
            return woken
        return int(await batches.pauses.resume_scope(name))

    count = with_batches(settings, go)
    if count is None:
        console.print(f"batch {name} is not paused: nothing to resume")
        return
    what = "queued job(s) go on" if kind == "batch" else "held job(s) start now"
    console.print(f"{kind} {name} resumed: {count} {what}")


def _flag(kind: str, name: str) -> str:
    return f" {name}" if kind == "batch" else f" --scope {name}"
