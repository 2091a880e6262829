"""``llmqueue worker``, ``health``, ``workers``, ``complete`` and ``simulate-provider``."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from llmqueue.batches.display import format_seconds
from llmqueue.cli.common import (
    ConfigOption,
    LiteLLMConfigOption,
    LLMConfigOption,
    LogFormatChoice,
    ModelOption,
    RedisOption,
    app,
    console,
    settings_from,
    with_redis,
)
from llmqueue.errors import LLMQueueError


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
    litellm_config: LiteLLMConfigOption = None,
    gated: Annotated[
        bool,
        typer.Option(
            "--gated",
            hidden=True,  # for `llmqueue run`, which holds the other end of the pipe
            help="Start up, then take no job until the line 'open' comes on stdin (a pipe); stop at its end.",
        ),
    ] = False,
) -> None:
    """Run a worker that takes jobs from Redis and calls the provider through LiteLLM."""
    from llmqueue.ops.events import EventSink
    from llmqueue.ops.logs import JobLog, configure_logging, secrets_of
    from llmqueue.ops.start_gate import require_pipe, wait_for_opening

    worker_overrides: dict[str, Any] = {}
    if max_jobs is not None:
        worker_overrides["max_jobs"] = max_jobs
    if queue is not None:
        worker_overrides["queue_name"] = queue
    settings = settings_from(
        config,
        redis_url,
        litellm_config=litellm_config,
        **({"worker": worker_overrides} if worker_overrides else {}),
    )
    secrets = secrets_of(settings)
    configure_logging(log_format.value, verbose=verbose, secrets=secrets)
    sinks: list[EventSink] = [JobLog(secrets)]
    if metrics_port is not None:
        from llmqueue.ops.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise LLMQueueError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
        sinks.append(metrics)
    if gated:
        require_pipe(sys.stdin)
    from llmqueue.ops.interrupts import interrupted_once
    from llmqueue.ops.preflight import forget_start, redis_refusal

    url, queue_name = settings.redis_url.get_secret_value(), settings.worker.queue_name
    # Until the worker's own handlers take over, SIGTERM (a run stopping, a pod scaled down while it
    # starts) raises KeyboardInterrupt as Ctrl-C does, so the finally below takes the mark away (`run`
    # sends SIGINT with it: ignored meanwhile).
    with interrupted_once():
        try:
            refused = asyncio.run(redis_refusal(url, starting_on=queue_name))
            if refused is not None:
                raise LLMQueueError(refused)  # not retried: a wrong password or database does not heal
            from llmqueue.ops.collector import collector_paused

            with collector_paused():
                from llmqueue.worker import create_worker  # LiteLLM's import takes seconds: after the checks

            start_gate = functools.partial(wait_for_opening, sys.stdin) if gated else None
            create_worker(settings, burst=burst, sinks=sinks, start_gate=start_gate).run()
        finally:
            asyncio.run(forget_start(url))  # if it never came up: no worker on its way up any more


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

    from llmqueue.ops.counters import JobCounts
    from llmqueue.ops.registry import WorkerInfo, live_workers, read_workers

    settings = settings_from(config, redis_url)
    queue_name = queue or settings.worker.queue_name
    limit = max_age if max_age is not None else 3 * settings.worker.heartbeat_interval
    host = socket.gethostname() if local else None

    async def check(redis: Any) -> tuple[list[WorkerInfo], int]:
        return await read_workers(redis), await redis.zcard(queue_name)

    registered, queued = with_redis(settings, check)
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
    running = sum(w.in_flight for w in live)
    typer.echo(f"jobs: {running} running, {queued} in the queue (due, deferred or running)")
    typer.echo(f"since the workers started: {JobCounts.total(w.jobs for w in live).describe()}")


@app.command()
def workers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    queue: Annotated[str | None, typer.Option(help="Only workers on this queue.")] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """List the live workers: host, pid, queue, jobs in flight, uptime, last heartbeat; and those still
    starting (importing LiteLLM), above the table (not in --json)."""
    import time

    from rich.table import Column, Table

    from llmqueue.ops.registry import StartingWorker, WorkerInfo, read_starting, read_workers

    async def read(redis: Any) -> tuple[list[WorkerInfo], list[StartingWorker]]:
        return await read_workers(redis), await read_starting(redis)

    settings = settings_from(config, redis_url)
    registered, starting = with_redis(settings, read)
    found = [w for w in registered if queue is None or w.queue == queue]
    starting = [w for w in starting if queue is None or w.queue == queue]
    now = time.time()
    if as_json:
        typer.echo(json.dumps([w.to_json(now) for w in found], indent=2))
        return
    for coming in starting:
        since = format_seconds(now - coming.since)
        console.print(f"starting: pid {coming.pid} on {coming.host}, queue {coming.queue}, for {since}")
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
            format_seconds(now - w.started_at),
            f"{w.age(now):.1f}s ago",
        )
    Console().print(table)
    console.print(f"{len(found)} worker(s), {sum(w.in_flight for w in found)} job(s) in flight")


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

    settings = settings_from(config, redis_url)
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


@app.command("simulate-provider")
def simulate_provider(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port, printed on start).")] = 8900,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    rpm: Annotated[float | None, typer.Option(help="Requests per minute it allows (default: any).")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute it allows (default: any).")] = None,
    itpm: Annotated[
        float | None, typer.Option(help="Input tokens per minute it allows, as Anthropic limits them.")
    ] = None,
    otpm: Annotated[
        float | None, typer.Option(help="Output tokens per minute it allows (max_tokens must fit).")
    ] = None,
    window_seconds: Annotated[
        float, typer.Option("--window-seconds", "--window", help="Rate-limit bucket window, seconds.")
    ] = 1.0,
    latency: Annotated[float, typer.Option(help="Mean seconds per call.")] = 0.0,
    latency_jitter: Annotated[float, typer.Option(help="Latency spread as a fraction, 0-1.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Fraction of calls answered 500/502/503, 0-1.")] = 0.0,
    timeout_rate: Annotated[float, typer.Option(help="Fraction of calls that hang first, 0-1.")] = 0.0,
    hang_seconds: Annotated[float, typer.Option(help="How long a hanging call hangs.")] = 30.0,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random faults.")] = None,
    completion_tokens: Annotated[int, typer.Option(help="Completion length in tokens.")] = 16,
    batch_validating_seconds: Annotated[
        float, typer.Option(help="Seconds a Batch API batch stays 'validating'.")
    ] = 0.1,
    batch_in_progress_seconds: Annotated[
        float, typer.Option(help="Seconds a Batch API batch stays 'in_progress'.")
    ] = 0.3,
    rate_limit_headers: Annotated[
        str, typer.Option(help="Rate-limit headers it sends: openai, anthropic or none.")
    ] = "openai",
    other_client_share: Annotated[
        float, typer.Option(help="Fraction of both limits another client on the key takes, 0-1.")
    ] = 0.0,
    limits_per_model: Annotated[
        bool,
        typer.Option(
            "--limits-per-model", help="Give each model its own limits, as OpenAI does (default: one set)."
        ),
    ] = False,
) -> None:
    """Serve a local OpenAI-compatible provider with rate limits and faults (no API key needed)."""
    options = {name: value for name, value in locals().items() if name not in ("port", "host")}
    from pydantic import ValidationError

    from llmqueue.simulator.server import ProviderConfig, serve

    try:
        config = ProviderConfig(**options)
    except ValidationError as exc:
        raise LLMQueueError(f"invalid simulated provider options: {exc}") from None
    serve(config, host=host, port=port)
