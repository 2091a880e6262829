"""``llmqueue submit``, ``status``, ``results``, ``cancel``, ``retry`` and ``run``: batches."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.live import Live

from llmqueue.cli.common import (
    BatchArgument,
    ConfigOption,
    LLMConfigOption,
    ModelOption,
    RedisOption,
    app,
    console,
    settings_from,
    with_batches,
)
from llmqueue.errors import LLMQueueError
from llmqueue.ops.redaction import redis_error_line


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL file: OpenAI Batch requests or short-form lines.")],
    batch: Annotated[
        str | None, typer.Option("--batch", help="Batch id (default: file name + time).")
    ] = None,
    model: ModelOption = None,
    llm_config: LLMConfigOption = None,
    priority: Annotated[bool, typer.Option("--priority", help="Run ahead of jobs already queued.")] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Queue the valid lines; write rejected ones to --rejects.")
    ] = False,
    rejects: Annotated[Path | None, typer.Option(help="Where --skip-invalid writes rejected lines.")] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop starting jobs once the batch spent USD.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Stop starting jobs after this many tokens.")] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Queue every line of a JSONL file as one batch and print the batch id."""
    from llmqueue.batches.control import new_batch_id
    from llmqueue.batches.files import write_rejects

    settings = settings_from(config, redis_url)
    batch_id = batch or new_batch_id(file)
    try:
        report = with_batches(
            settings,
            lambda b: b.submit_file(
                file,
                batch_id,
                default_model=model,
                llm_config=llm_config,
                skip_invalid=skip_invalid,
                max_cost=max_cost if max_cost is not None else settings.batch.max_cost,
                max_tokens=max_tokens if max_tokens is not None else settings.batch.max_tokens,
                priority=priority,
                on_queueing=lambda: console.print(f"batch {batch_id}: queueing {file}"),
            ),
        )
    except RedisError as exc:
        raise LLMQueueError(
            f"batch {batch_id}: submission stopped by a Redis error ({redis_error_line(exc)}); every chunk "
            f"queued so far is counted in its total. Run `llmqueue submit {file} --batch {batch_id}` again "
            "to queue the rest"
        ) from None
    if report.rejected:
        path = rejects or file.with_suffix(".rejected.jsonl")
        write_rejects(report.rejected, path)
        console.print(f"{len(report.rejected)} line(s) rejected, written to {path}")
    console.print(
        f"{report.submitted} job(s) queued"
        + (f", {report.already_known} already known" if report.already_known else "")
    )
    typer.echo(batch_id)


@app.command()
def status(
    batch: BatchArgument,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the batch is done.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Counts, tokens, cost, throughput and ETA of a batch."""
    from llmqueue.batches.control import Batches
    from llmqueue.batches.display import status_table
    from llmqueue.producer import Producer

    settings = settings_from(config, redis_url)
    if as_json:
        current = with_batches(settings, lambda b: b.status(batch))
        typer.echo(json.dumps(current.to_json(), indent=2))
        return
    if not watch:
        Console().print(status_table(with_batches(settings, lambda b: b.status(batch))))
        return

    async def follow() -> None:
        async with Producer(settings) as producer:
            batches = Batches(producer.store, producer.settings)
            with Live(console=Console(), refresh_per_second=4) as live:
                async for current in batches.follow(batch, interval=1.0):
                    live.update(status_table(current))

    asyncio.run(follow())


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
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Write a batch's results in input order (jobs not finished yet appear with error "missing")."""
    from llmqueue.batches.display import BatchProgress
    from llmqueue.batches.files import write_results

    settings = settings_from(config, redis_url)

    async def go(batches: Any) -> list[str]:
        if wait:
            with BatchProgress(console) as progress:
                await batches.wait(batch, on_progress=progress.update, on_stall=progress.warn)
        return await write_results(batches.results(batch), output, failed_only=failed_only)

    failures = with_batches(settings, go)
    console.print(f"results written to {output}" + (f" ({len(failures)} not succeeded)" if failures else ""))


@app.command()
def cancel(batch: BatchArgument, config: ConfigOption = None, redis_url: RedisOption = None) -> None:
    """Cancel a batch: queued and retry-waiting jobs end as cancelled, running ones finish."""
    with console.status(f"cancelling batch {batch}") as spinner:

        def progress(seen: int, cancelled: int) -> None:
            spinner.update(f"cancelling batch {batch}: {seen} job(s) looked at, {cancelled} cancelled")

        count = with_batches(
            settings_from(config, redis_url), lambda b: b.cancel(batch, on_progress=progress)
        )
    console.print(f"{count} job(s) cancelled; running jobs will finish")


@app.command()
def retry(
    batch: BatchArgument,
    failed: Annotated[bool, typer.Option("--failed", help="Queue the failed jobs again.")] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Queue a batch's failed jobs again, each with a fresh retry budget."""
    if not failed:
        raise LLMQueueError("say what to retry: llmqueue retry BATCH --failed")
    count = with_batches(settings_from(config, redis_url), lambda b: b.retry_failed(batch))
    console.print(f"{count} failed job(s) queued again")


@app.command()
def run(
    file: Annotated[Path | None, typer.Argument(help="JSONL file to run (not needed with --resume).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the results.")] = Path(
        "results.jsonl"
    ),
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 2,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent jobs per worker.")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute for the model.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute for the model.")] = None,
    model: ModelOption = None,
    llm_config: LLMConfigOption = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Batch id (default: file name + time).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Resume an interrupted run of BATCH.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop starting jobs once the batch spent USD.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Stop starting jobs after this many tokens.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Run the valid lines only.")] = False,
    rejects: Annotated[Path | None, typer.Option(help="Where --skip-invalid writes rejected lines.")] = None,
    simulate_provider: Annotated[
        bool,
        typer.Option(
            "--simulate-provider",
            help=(
                "Send the jobs to the bundled simulated provider (no API key needed); it enforces limits "
                "2% above --rpm/--tpm, as a key whose limits the workers are set just under."
            ),
        ),
    ] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Run a JSONL file end to end: Redis, workers, progress, results; exit 0 only if every job succeeded.

    Without --redis-url (or REDIS_URL) a private redis-server is started and removed afterwards.
    """
    from contextlib import ExitStack

    from llmqueue.batches.run import RunOptions, run_batch

    env_url = redis_url or os.environ.get("REDIS_URL")
    settings = settings_from(config, env_url)
    if env_url is None and "redis_url" in settings.model_fields_set:
        env_url = settings.redis_url.get_secret_value()
    options = RunOptions(
        file=file,
        output=output,
        batch_id=resume or batch,
        resume=resume is not None,
        workers=workers,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        model=model,
        llm_config=llm_config,
        max_cost=max_cost if max_cost is not None else settings.batch.max_cost,
        max_tokens=max_tokens if max_tokens is not None else settings.batch.max_tokens,
        skip_invalid=skip_invalid,
        rejects=rejects,
        redis_url=env_url,
        config=config,
    )
    try:
        with ExitStack() as stack:
            if simulate_provider:
                from llmqueue.simulator.demo import demo_provider

                env = stack.enter_context(demo_provider(rpm=rpm, tpm=tpm, model=model))
                options.worker_env.update(env)
                options.model = env["LLM_MODEL"]
            summary = asyncio.run(run_batch(options, settings, console))
    except KeyboardInterrupt:
        batch_id = options.batch_id or "BATCH"
        console.print(f"\ninterrupted: finished jobs are kept. Resume with: llmqueue run --resume {batch_id}")
        raise SystemExit(130) from None
    done = summary.status
    console.print(
        f"{done.succeeded}/{done.total} succeeded, {done.failed} failed, {done.cancelled} cancelled; "
        f"{done.requests} requests ({done.rate_limited} answered 429), {done.tokens} tokens, "
        f"${done.cost:.4f} → {summary.output}"
    )
    if not summary.ok:
        for line in summary.failures[:10]:
            console.print(f"  [red]✗[/red] {line}")
        if len(summary.failures) > 10:
            console.print(f"  … and {len(summary.failures) - 10} more")
        raise SystemExit(1)
