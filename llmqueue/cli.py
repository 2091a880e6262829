"""The ``llmqueue`` command: a thin shell over the same functions the Python API offers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from llmqueue.errors import LLMQueueError
from llmqueue.settings import Settings, load_settings

app = typer.Typer(
    name="llmqueue",
    help="A Redis job queue for rate-limited LLM calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="LLMQUEUE_CONFIG",
        help="config.toml to read (default: ./config.toml when present).",
        dir_okay=False,
    ),
]
RedisOption = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (default: REDIS_URL or the config file).")
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="LiteLLM model for lines that name none (default: [llm] model).")
]
LLMConfigOption = Annotated[str | None, typer.Option("--llm-config", help="A named [llm.<name>] group.")]
BatchArgument = Annotated[str, typer.Argument(help="The batch id (printed by submit/run).")]


class LogFormatChoice(StrEnum):
    """``llmqueue worker --log-format``."""

    text = "text"
    json = "json"


def _settings(config: Path | None, redis_url: str | None = None, **overrides: Any) -> Settings:
    if redis_url:
        overrides["redis_url"] = redis_url
    return load_settings(config, **overrides)


def _with_batches(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(batches)`` against the settings' Redis."""
    from llmqueue.batches import Batches
    from llmqueue.producer import Producer

    async def go() -> T:
        async with Producer(settings) as producer:
            return await action(Batches(producer.store))

    return asyncio.run(go())


@app.command()
def worker(
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    max_jobs: Annotated[int | None, typer.Option(help="Concurrent jobs in this process.")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue name.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every job event.")] = False,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics.")
    ] = None,
    log_format: Annotated[
        LogFormatChoice, typer.Option(help="text, or json: one JSON object per line, every job event.")
    ] = LogFormatChoice.text,
) -> None:
    """Run a worker that takes jobs from Redis and calls the provider through LiteLLM."""
    from llmqueue.events import EventSink
    from llmqueue.joblog import JobLog, configure_logging, secrets_of

    worker_overrides: dict[str, Any] = {}
    if max_jobs is not None:
        worker_overrides["max_jobs"] = max_jobs
    if queue is not None:
        worker_overrides["queue_name"] = queue
    settings = _settings(config, redis_url, **({"worker": worker_overrides} if worker_overrides else {}))
    secrets = secrets_of(settings)
    configure_logging(log_format.value, verbose=verbose, secrets=secrets)
    sinks: list[EventSink] = [JobLog(secrets)]
    if metrics_port is not None:
        from llmqueue.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise LLMQueueError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
        sinks.append(metrics)
    from llmqueue.worker import create_worker  # LiteLLM's import takes seconds: after the quick checks

    create_worker(settings, burst=burst, sinks=sinks).run()


@app.command()
def health(
    max_age: Annotated[
        float | None,
        typer.Option(help="Seconds since a worker's last heartbeat (default: 3 x heartbeat_interval)."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Only workers on this host (a container's own healthcheck).")
    ] = False,
    queue: Annotated[str | None, typer.Option(help="Queue name (default: the configured one).")] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Exit 0 if a worker checked in within --max-age seconds, 1 if none did (for healthchecks)."""
    import socket
    import time

    from llmqueue.registry import WorkerInfo, arq_health, live_workers, read_workers

    settings = _settings(config, redis_url)
    queue_name = queue or settings.worker.queue_name
    limit = max_age if max_age is not None else 3 * settings.worker.heartbeat_interval
    host = socket.gethostname() if local else None

    async def check(redis: Any) -> tuple[list[WorkerInfo], str | None]:
        return await read_workers(redis), await arq_health(redis, queue_name)

    registered, arq_line = _with_redis(settings, check)
    live = live_workers(registered, max_age=limit, queue=queue_name, host=host)
    where = f"queue {queue_name}" + (f" on {host}" if host else "")
    if not live:
        console.print(
            f"unhealthy: no worker on {where} has checked in within {limit:g}s "
            f"({len(registered)} registered worker(s) in all)"
        )
        raise typer.Exit(1)
    newest = min(w.age(time.time()) for w in live)
    typer.echo(f"ok: {len(live)} live worker(s) on {where}, last heartbeat {newest:.1f}s ago")
    if arq_line:
        typer.echo(f"arq: {arq_line}")


@app.command()
def workers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    queue: Annotated[str | None, typer.Option(help="Only workers on this queue.")] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """List the live workers: host, pid, queue, jobs in flight, uptime, last heartbeat."""
    import time

    from rich.table import Column, Table

    from llmqueue.registry import read_workers

    settings = _settings(config, redis_url)
    found = [w for w in _with_redis(settings, read_workers) if queue is None or w.queue == queue]
    now = time.time()
    if as_json:
        typer.echo(json.dumps([w.to_json(now) for w in found], indent=2))
        return
    if not found:
        console.print("no live workers")
        return
    table = Table(
        Column("worker", no_wrap=True), "host", "pid", "queue", "in flight", "up", "last seen", expand=False
    )
    for w in found:
        table.add_row(
            w.worker_id,
            w.host,
            str(w.pid),
            w.queue,
            str(w.in_flight),
            _duration(now - w.started_at),
            f"{w.age(now):.1f}s ago",
        )
    Console().print(table)
    console.print(f"{len(found)} worker(s), {sum(w.in_flight for w in found)} job(s) in flight")


def _with_redis(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(redis)`` with a client on the settings' Redis; unreachable Redis is a clear error."""
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from llmqueue.errors import RedisUnavailableError
    from llmqueue.redaction import redact_url

    url = settings.redis_url.get_secret_value()

    async def go() -> T:
        client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        try:
            return await action(client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailableError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
        finally:
            await client.aclose()

    return asyncio.run(go())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@app.command()
def complete(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: ModelOption = None,
    llm_config: LLMConfigOption = None,
    max_tokens: Annotated[int | None, typer.Option(help="Completion token limit.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the result.")] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Queue one chat completion, wait for it, and print the result as JSON."""
    from llmqueue.producer import Producer

    settings = _settings(config, redis_url)
    job: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "model": model}
    if llm_config:
        job["llm_config"] = llm_config
    if max_tokens is not None:
        job["params"] = {"max_tokens": max_tokens}

    async def go() -> str:
        async with Producer(settings) as producer:
            handle = await producer.submit(job)
            return (await handle.result(timeout=timeout)).model_dump_json(indent=2)

    typer.echo(asyncio.run(go()))


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
    from llmqueue.batch_run import write_rejects
    from llmqueue.batches import new_batch_id

    settings = _settings(config, redis_url)
    batch_id = batch or new_batch_id(file)
    report = _with_batches(
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
        ),
    )
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
    from llmqueue.batches import Batches
    from llmqueue.producer import Producer
    from llmqueue.progress import status_table

    settings = _settings(config, redis_url)
    if as_json:
        current = _with_batches(settings, lambda b: b.status(batch))
        typer.echo(json.dumps(current.to_json(), indent=2))
        return
    if not watch:
        Console().print(status_table(_with_batches(settings, lambda b: b.status(batch))))
        return

    async def follow() -> None:
        async with Producer(settings) as producer:
            batches = Batches(producer.store)
            current = await batches.status(batch)
            with Live(status_table(current), console=Console(), refresh_per_second=4) as live:
                while not current.done:
                    await asyncio.sleep(1)
                    current = await batches.status(batch)
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
    from llmqueue.batch_run import write_results
    from llmqueue.progress import BatchProgress

    settings = _settings(config, redis_url)

    async def go(batches: Any) -> list[str]:
        if wait:
            with BatchProgress(console) as progress:
                await batches.wait(batch, on_progress=progress.update)
        return await write_results(batches, batch, output, failed_only=failed_only)

    failures = _with_batches(settings, go)
    console.print(f"results written to {output}" + (f" ({len(failures)} not succeeded)" if failures else ""))


@app.command()
def cancel(batch: BatchArgument, config: ConfigOption = None, redis_url: RedisOption = None) -> None:
    """Cancel a batch: queued and retry-waiting jobs end as cancelled, running ones finish."""
    count = _with_batches(_settings(config, redis_url), lambda b: b.cancel(batch))
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
    count = _with_batches(_settings(config, redis_url), lambda b: b.retry_failed(batch))
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
    from llmqueue.batch_run import RunOptions, run_batch

    env_url = redis_url or os.environ.get("REDIS_URL")
    settings = _settings(config, env_url)
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
        simulate_provider=simulate_provider,
    )
    try:
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


@app.command("simulate-provider")
def simulate_provider(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8900,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    rpm: Annotated[float | None, typer.Option(help="Requests per minute it allows.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute it allows.")] = None,
    latency: Annotated[float, typer.Option(help="Mean seconds per call.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Fraction of calls answered with a 5xx.")] = 0.0,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key.")] = None,
) -> None:
    """Serve a local OpenAI-compatible provider with rate limits and faults (no API key needed)."""
    from llmqueue.provider import ProviderConfig, serve

    serve(
        ProviderConfig(rpm=rpm, tpm=tpm, latency=latency, error_rate=error_rate, api_key=api_key),
        host=host,
        port=port,
    )


def main() -> None:
    """Console entry point: user errors print one clear line, not a traceback."""
    # LiteLLM fetches its price map over the network at import unless told not to; the bundled copy is
    # used unless the user asked otherwise.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        app()
    except LLMQueueError as exc:
        console.print(f"[red]llmqueue:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
