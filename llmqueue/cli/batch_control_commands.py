"""``llmqueue results``, ``cancel``, ``forget`` and ``retry``: what is done with a submitted batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmqueue.cli.common import (
    BatchArgument,
    ConfigOption,
    MaxCostOption,
    MaxTokensOption,
    RedisOption,
    app,
    console,
    require_positive,
    settings_from,
    with_batches,
)
from llmqueue.errors import LLMQueueError


@app.command()
def results(
    batch: BatchArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output JSONL (OpenAI Batch output format).")
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress and wait for the batch to finish.")
    ] = False,
    failed_only: Annotated[
        bool, typer.Option("--failed-only", help="Write only failed/cancelled jobs.")
    ] = False,
    collect: Annotated[
        bool,
        typer.Option(
            "--collect",
            help="Wait for the batch, writing its results in input order as they finish, and drop each "
            "job's keys from Redis once its line is written. Run again with the same -o to go on after "
            "an interruption.",
        ),
    ] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Write a batch's results in input order (jobs not finished yet appear with error "missing").

    With --collect the results are written as they finish and dropped from Redis: the file is the
    only copy (a second `results` of the batch says where it went).
    """
    from llmqueue.batches.collect import written_out
    from llmqueue.batches.display import BatchProgress
    from llmqueue.batches.output import write_results

    if collect and failed_only:
        raise LLMQueueError(
            "--collect writes every result and drops it from Redis: with --failed-only the others would "
            "be lost. Collect the whole batch, or write the failures without --collect"
        )
    settings = settings_from(config, redis_url)

    async def go(batches: Any) -> tuple[list[str], int]:
        if collect:
            from llmqueue.batches.collect import collect as collect_results

            with BatchProgress(console) as progress:
                writer = await collect_results(
                    batches, batch, output, on_progress=progress.update, on_stall=progress.warn
                )
            return writer.failures, writer.failure_count
        if wait:
            with BatchProgress(console) as progress:
                await batches.wait(batch, on_progress=progress.update, on_stall=progress.warn)
        await batches.status(batch)
        gone = await written_out(batches.redis, batch)
        if gone is not None:
            raise LLMQueueError(gone)
        failures = await write_results(batches.results(batch), output, failed_only=failed_only)
        return failures, len(failures)

    _, failure_count = with_batches(settings, go)
    console.print(
        f"results written to {output}" + (f" ({failure_count} not succeeded)" if failure_count else "")
    )
    if collect:
        console.print("their keys were dropped from Redis: the file is the only copy")


@app.command()
def cancel(batch: BatchArgument, config: ConfigOption = None, redis_url: RedisOption = None) -> None:
    """Cancel a batch: queued and retry-waiting jobs end as cancelled, running ones finish.

    A batch sent through the provider's Batch API has its provider batches cancelled too.
    """
    from llmqueue import keys
    from llmqueue.ops.collector import collector_paused

    settings = settings_from(config, redis_url)
    with console.status(f"cancelling batch {batch}") as spinner:

        def progress(seen: int, cancelled: int) -> None:
            spinner.update(f"cancelling batch {batch}: {seen} job(s) looked at, {cancelled} cancelled")

        async def go(batches: Any) -> tuple[int, int]:
            count = await batches.cancel(batch, on_progress=progress)
            if not await batches.redis.exists(keys.batch_api(batch)):
                return count, 0  # no provider batch: no need of LiteLLM, seconds of CPU to import
            with collector_paused():
                from llmqueue.batches.batch_api import cancel_provider_batches

            return count, await cancel_provider_batches(batches, batch, settings.llm)

        count, provider = with_batches(settings, go)
    console.print(
        f"{count} job(s) cancelled; running jobs will finish"
        + (f"; {provider} provider batch(es) asked to cancel" if provider else "")
    )


@app.command()
def forget(batch: BatchArgument, config: ConfigOption = None, redis_url: RedisOption = None) -> None:
    """Remove a finished batch from Redis now: its results and its bookkeeping.

    Without it, a batch expires result_ttl seconds after its last job finished. A batch with jobs
    queued or running is refused: cancel it first.
    """
    settings = settings_from(config, redis_url)

    async def go(batches: Any) -> int:
        count: int = await batches.forget(batch)
        return count

    deleted = with_batches(settings, go)
    console.print(f"batch {batch} forgotten: {deleted} key(s) removed")


@app.command()
def retry(
    batch: BatchArgument,
    failed: Annotated[bool, typer.Option("--failed", help="Queue the failed jobs again.")] = False,
    cancelled: Annotated[
        bool, typer.Option("--cancelled", help="Queue the cancelled jobs again (a cancel or the budget).")
    ] = False,
    max_cost: MaxCostOption = None,
    max_tokens: MaxTokensOption = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Queue a batch's failed (or cancelled) jobs again, each with a fresh retry budget."""
    if not failed and not cancelled:
        raise LLMQueueError("say what to retry: llmqueue retry BATCH --failed (or --cancelled)")
    require_positive(max_cost=max_cost, max_tokens=max_tokens)
    if (max_cost is not None or max_tokens is not None) and not cancelled:
        raise LLMQueueError("--max-cost and --max-tokens raise the budget of cancelled jobs: add --cancelled")
    settings = settings_from(config, redis_url)
    if failed:
        count = with_batches(settings, lambda b: b.retry_failed(batch))
        console.print(f"{count} failed job(s) queued again")
    if cancelled:
        count = with_batches(
            settings, lambda b: b.retry_cancelled(batch, max_cost=max_cost, max_tokens=max_tokens)
        )
        console.print(f"{count} cancelled job(s) queued again")
