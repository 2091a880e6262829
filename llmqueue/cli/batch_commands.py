"""``llmqueue submit``, ``status`` and ``run``: batches (``results``, ``cancel``, ``forget`` and ``retry``
are in :mod:`llmqueue.cli.batch_control_commands`)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from llmqueue.cli.common import (
    BatchIdOption,
    CacheDirOption,
    ConfigOption,
    DryRunOption,
    EnqueuedTokenLimitOption,
    LiteLLMConfigOption,
    LLMConfigOption,
    MaxCostOption,
    MaxTokensOption,
    ModelOption,
    NoCacheOption,
    PollIntervalOption,
    PriorityOption,
    RedisOption,
    RejectsOption,
    SkipInvalidOption,
    WeightOption,
    app,
    console,
    print_estimate,
    require_positive,
    settings_from,
    unresolved_deployments,
    with_batches,
    with_cache_dir,
    with_redis,
)
from llmqueue.cli.tiers import Via, check_tier_options, submit_via_batch_api
from llmqueue.errors import LLMQueueError, RunStoppedError
from llmqueue.ops.interrupts import interrupted_by_signals
from llmqueue.redaction import redis_error_line
from llmqueue.settings import Settings


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL file: OpenAI Batch requests or short-form lines.")],
    batch: BatchIdOption = None,
    model: ModelOption = None,
    llm_config: LLMConfigOption = None,
    priority: PriorityOption = 0,
    weight: WeightOption = 1.0,
    skip_invalid: SkipInvalidOption = False,
    rejects: RejectsOption = None,
    max_cost: MaxCostOption = None,
    max_tokens: MaxTokensOption = None,
    no_cache: NoCacheOption = False,
    cache_dir: CacheDirOption = None,
    dry_run: DryRunOption = False,
    via: Annotated[
        Via,
        typer.Option(
            help="batch-api: send the lines through the provider's Batch API from here and wait for it "
            "(submit again with the same --batch to resume)."
        ),
    ] = Via.live,
    poll_interval: PollIntervalOption = 10.0,
    enqueued_token_limit: EnqueuedTokenLimitOption = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Submit every line of a JSONL file as one batch and print the batch id.

    The lines are stored in Redis compressed and queued a window at a time (\\[batch] window) by the
    workers as jobs finish; submitting again to the same --batch goes on where it stopped.

    Workers answer lines from the response cache (theirs: \\[cache] of the workers' settings) unless
    --no-cache; --cache-dir here only tells --dry-run where to look.
    """
    from llmqueue.batches.control import new_batch_id
    from llmqueue.batches.output import write_rejects

    require_positive(max_cost=max_cost, max_tokens=max_tokens)
    settings = with_cache_dir(settings_from(config, redis_url), cache_dir)
    if dry_run:
        print_estimate(
            file, settings, model=model, llm_config=llm_config, use_cache=not no_cache, max_cost=max_cost
        )
        return
    unresolved = unresolved_deployments(settings)
    if unresolved is not None:  # the workers may have an environment of their own: a warning
        console.print(
            f"[yellow]warning:[/yellow] {escape(unresolved)}\n(workers started with this environment "
            "would not start)",
            highlight=False,
        )
    batch_id = batch or new_batch_id(file)
    if via is Via.batch_api:
        submit_via_batch_api(
            file, batch_id, settings, model, llm_config, not no_cache, poll_interval, enqueued_token_limit
        )
        typer.echo(batch_id)
        return
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
                cache=settings.cache.enabled and not no_cache,
                weight=weight,
                on_queueing=lambda: console.print(f"batch {batch_id}: queueing {file}"),
            ),
        )
    except RedisError as exc:
        raise LLMQueueError(
            f"batch {batch_id}: submission stopped by a Redis error ({redis_error_line(exc)}); what was "
            f"stored and queued so far is kept. Run `llmqueue submit {file} --batch {batch_id}` again "
            "to go on from there"
        ) from None
    if report.rejected:
        path = rejects or file.with_suffix(".rejected.jsonl")
        write_rejects(report.rejected, path)
        console.print(f"{len(report.rejected)} line(s) rejected, written to {path}")
    console.print(
        f"{report.submitted} job(s) queued"
        + (f", {report.already_known} already known" if report.already_known else "")
        + (f", {report.held} held in Redis for the workers to queue as jobs finish" if report.held else "")
    )
    typer.echo(batch_id)


@app.command()
def status(
    batch: Annotated[
        str | None, typer.Argument(help="A batch id; without one, the queue's jobs per priority.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the batch is done.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Counts, tokens, cost, throughput and ETA of a batch, with the calls of each deployment and its
    state now; or, without a batch, queued/running per priority."""
    from llmqueue.batches.control import Batches
    from llmqueue.batches.display import limits_table, spending_table, status_table
    from llmqueue.cli.limit_commands import batch_limits
    from llmqueue.limits.breaker import deployment_states
    from llmqueue.producer import Producer
    from llmqueue.queue.spend_report import read_spending

    settings = settings_from(config, redis_url)
    if batch is None:
        if watch:
            raise typer.BadParameter("--watch follows a batch: give its id")
        _queue_status(settings, as_json)
        return

    async def states(batches: Batches, names: list[str]) -> dict[str, Any]:
        return {s.name: s for s in await deployment_states(batches.redis, names)} if names else {}

    async def view(batches: Batches) -> tuple[Any, dict[str, Any]]:
        current = await batches.status(batch)
        return current, await states(batches, list(current.deployments))

    spending = with_redis(settings, lambda redis: read_spending(redis, time.time(), batch_id=batch))
    if as_json:
        current, now = with_batches(settings, view)
        limits = with_redis(settings, lambda redis: batch_limits(redis, batch))
        data = {**current.to_json(), "limits": [s.to_json() for s in limits], "spending": spending}
        data["deployment_states"] = {name: asdict(state) for name, state in now.items()}
        typer.echo(json.dumps(data, indent=2))
        return
    if not watch:
        current, now = with_batches(settings, view)
        Console().print(status_table(current, {name: state.describe() for name, state in now.items()}))
        limits = with_redis(settings, lambda redis: batch_limits(redis, batch))
        if limits:
            Console().print(limits_table(limits, title="limits it runs under"))
        if spending["limits_set"]:
            Console().print(spending_table(spending))
        return

    async def follow() -> None:
        async with Producer(settings) as producer:
            batches = Batches(producer.store, producer.settings)
            with Live(console=Console(), refresh_per_second=4) as live:
                async for current in batches.follow(batch, interval=1.0):
                    now = await states(batches, list(current.deployments))
                    live.update(status_table(current, {n: s.describe() for n, s in now.items()}))

    asyncio.run(follow())


def _queue_status(settings: Settings, as_json: bool) -> None:
    from dataclasses import asdict

    from llmqueue.batches.display import queue_table, spending_table
    from llmqueue.queue.ready import ReadyQueue
    from llmqueue.queue.spend_report import read_spending

    queue = settings.worker.queue_name
    counts = with_batches(
        settings, lambda b: ReadyQueue(b.redis, queue, claim_ttl=settings.worker.in_progress_ttl).counts()
    )
    spending = with_redis(settings, lambda redis: read_spending(redis, time.time()))
    if as_json:
        priorities = [asdict(row) for row in counts]
        typer.echo(json.dumps({"queue": queue, "priorities": priorities, "spending": spending}, indent=2))
    else:
        Console().print(queue_table(queue, counts))
        if spending["limits_set"]:
            Console().print(spending_table(spending))


def _resume_command(context: typer.Context, batch_id: str, *, leave_out: tuple[str, ...] = ()) -> str:
    """``llmqueue run --resume BATCH`` with the options this run was given other than their defaults:
    the resumed run needs the same provider, limits and output. The file and batch are the batch's own.
    A Redis URL with a password is left out, with a word to give it again: printed masked, the command
    would not run, and printed whole, the password would be on the screen and in logs."""
    import shlex
    from enum import Enum

    from llmqueue.redaction import redact_url

    def plain(value: Any) -> Any:
        return value.value if isinstance(value, Enum) else value

    words = ["llmqueue", "run", "--resume", batch_id]
    note = ""
    for param in context.command.params:
        name = param.name
        if name is None or name in ("file", "batch", "resume", *leave_out):
            continue
        value = plain(context.params.get(name))
        if value is None or value == plain(param.default):
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            words += [flag] if value else []
            continue
        whole = isinstance(value, float) and value.is_integer()
        text = str(int(value)) if whole else repr(value) if isinstance(value, float) else str(value)
        if name == "redis_url" and redact_url(text) != text:
            note = " (and --redis-url with its password, not printed here)"
            continue
        words += [flag, text]
    return shlex.join(words) + note


@app.command()
def run(
    context: typer.Context,
    file: Annotated[Path | None, typer.Argument(help="JSONL file to run (not needed with --resume).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the results.")] = Path(
        "results.jsonl"
    ),
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes to start at most: the first at once, the others once they would end "
            "the run sooner."
        ),
    ] = 2,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent jobs per worker.")] = None,
    rpm: Annotated[
        float | None,
        typer.Option(
            help=r"Requests per minute for each model the lines name (unless \[limits] sets its own)."
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(
            help=r"Tokens per minute for each model the lines name (unless \[limits] sets its own)."
        ),
    ] = None,
    model: ModelOption = None,
    llm_config: LLMConfigOption = None,
    batch: BatchIdOption = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Resume an interrupted run of BATCH.")
    ] = None,
    max_cost: MaxCostOption = None,
    max_tokens: MaxTokensOption = None,
    skip_invalid: SkipInvalidOption = False,
    priority: PriorityOption = 0,
    weight: WeightOption = 1.0,
    rejects: RejectsOption = None,
    simulate_provider: Annotated[
        bool,
        typer.Option(
            "--simulate-provider",
            help=(
                "Send the jobs to the bundled simulated provider (no API key needed): a key whose limits "
                "are --rpm/--tpm, stated in its answers' rate-limit headers."
            ),
        ),
    ] = False,
    no_cache: NoCacheOption = False,
    cache_dir: CacheDirOption = None,
    dry_run: DryRunOption = False,
    via: Annotated[
        Via,
        typer.Option(
            help="live: workers call the provider; batch-api: the provider's Batch API, at its batch price."
        ),
    ] = Via.live,
    fallback: Annotated[
        Via,
        typer.Option(help="--via batch-api: where lines an expired or failed provider batch left go next."),
    ] = Via.batch_api,
    poll_interval: PollIntervalOption = 10.0,
    enqueued_token_limit: EnqueuedTokenLimitOption = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    litellm_config: LiteLLMConfigOption = None,
) -> None:
    """Run a JSONL file end to end: Redis, workers, progress, results; exit 0 only if every job succeeded.

    Without --redis-url (or REDIS_URL) a private redis-server is started and removed afterwards.
    """
    from contextlib import ExitStack

    from llmqueue.batches.options import RunOptions, run_settings
    from llmqueue.batches.run import LastLook, run_batch

    require_positive(rpm=rpm, tpm=tpm, concurrency=concurrency, max_cost=max_cost, max_tokens=max_tokens)
    check_tier_options(
        via, fallback, poll_interval, enqueued_token_limit, rpm, tpm, concurrency, max_cost, max_tokens
    )
    env_url = redis_url or os.environ.get("REDIS_URL")
    settings = with_cache_dir(settings_from(config, env_url, litellm_config=litellm_config), cache_dir)
    if dry_run:
        if file is None:
            raise LLMQueueError("--dry-run needs the JSONL file")
        print_estimate(
            file,
            run_settings(settings, model=model, rpm=rpm, tpm=tpm),
            model=model,
            llm_config=llm_config,
            use_cache=not no_cache,
            max_cost=max_cost,
        )
        return
    unresolved = unresolved_deployments(settings)
    if unresolved is not None:  # the run's workers inherit this environment: none of them would start
        raise LLMQueueError(f"{unresolved}\n(the run's workers take this environment; nothing was queued)")
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
        # A resume keeps the caps its batch has unless new ones are given: [batch]'s are for new batches
        # (applied to a resume, they would replace a cap given on the command line, or undo a cancel).
        max_cost=max_cost if max_cost is not None or resume else settings.batch.max_cost,
        max_tokens=max_tokens if max_tokens is not None or resume else settings.batch.max_tokens,
        skip_invalid=skip_invalid,
        rejects=rejects,
        priority=priority,
        weight=weight,
        redis_url=env_url,
        config=config,
        cache=not no_cache,
        cache_dir=cache_dir,
        via=via.value,
        fallback=fallback.value,
        poll_interval=poll_interval,
        enqueued_token_limit=enqueued_token_limit,
        litellm_config=litellm_config,
    )
    last_look = LastLook()
    try:
        with ExitStack() as stack:
            if simulate_provider:
                from llmqueue.simulator.demo import demo_provider

                env = stack.enter_context(demo_provider(rpm=rpm, tpm=tpm, model=model))
                options.worker_env.update(env)
                options.model = env["LLM_MODEL"]
            with interrupted_by_signals():  # SIGTERM as Ctrl-C; either at once, even in a long check
                summary = asyncio.run(run_batch(options, settings, console, last_look))
    except RunStoppedError as stop:
        # Its resume command as the run would print it: with the run's -o, provider and limits.
        raise LLMQueueError(stop.with_resume(_resume_command(context, stop.batch_id))) from None
    except KeyboardInterrupt:
        hint = _resume_command(context, options.batch_id or "BATCH")
        # The workers stopped at once, without their grace: their calls in flight go again on resume.
        abandoned = last_look.in_flight
        dropped = f"; {abandoned} call(s) in flight were abandoned, a resume makes them again"
        kept = "finished jobs are kept" + (dropped if abandoned else "")
        console.print(f"\ninterrupted: {kept}. Resume with: {escape(hint)}")
        raise SystemExit(130) from None
    done = summary.status
    console.print(
        f"{done.succeeded}/{done.total} succeeded, {done.failed} failed, {done.cancelled} cancelled; "
        + (f"{done.cached} from the cache, " if done.cached else "")
        + f"{done.requests} requests ({done.rate_limited} answered 429), {done.tokens} tokens, "
        f"${done.cost:.4f} → {summary.output}"
    )
    if summary.workers_started is not None and not (done.budget_exceeded and done.cancelled):
        console.print(
            f"{summary.workers_started} of {options.workers} workers started: the run ended before "
            "another would have sped it up"
        )
    if done.budget_exceeded and done.cancelled:
        raise_caps = done.caps_to_raise  # the caps reached, given again higher; the others as they were
        leave_out = tuple(flag.split()[0].removeprefix("--").replace("-", "_") for flag in raise_caps)
        hint = _resume_command(context, done.batch_id, leave_out=leave_out)
        stopped = f"its budget stopped {done.cancelled} job(s)"
        console.print(f"{stopped}; go on with a higher one: {escape(hint)} {' '.join(raise_caps)}")
    if not summary.ok:
        for line in summary.failures[:10]:
            console.print(f"  [red]✗[/red] {line}")
        if summary.failures_total > 10:
            console.print(f"  … and {summary.failures_total - 10} more")
        raise SystemExit(1)
