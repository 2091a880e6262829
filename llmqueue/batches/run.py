"""``llmqueue run``: one command from a JSONL file to a results file.

It starts (or uses) Redis, starts worker processes, submits the file as a batch, shows progress,
writes the results in input order and stops what it started. Interrupted, it leaves the batch in
Redis so ``llmqueue run --resume BATCH`` goes on without redoing finished jobs.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from llmqueue import keys
from llmqueue.batches.check_ahead import CheckAhead, checks_ahead
from llmqueue.batches.control import Batches, SubmitReport, check_batch_id, new_batch_id
from llmqueue.batches.display import BatchProgress
from llmqueue.batches.input import FileCheck, check_file, invalid_file_error, iter_jobs, require_requests
from llmqueue.batches.options import WORKER_LLM_ENV, RunOptions, with_workers_llm
from llmqueue.batches.ordered_output import OrderedWriter
from llmqueue.batches.output import write_rejects, write_results
from llmqueue.batches.run_lock import DirectoryLock, RedisRunLock
from llmqueue.batches.window import WindowFeeder, window_size
from llmqueue.batches.worker_ramp import WorkerRamp
from llmqueue.cache import CacheStore, open_store
from llmqueue.cache.disk import DiskStore
from llmqueue.errors import CacheError, LLMQueueError, RunStoppedError
from llmqueue.llm.policy import submission_refusal
from llmqueue.ops.collector import collector_paused
from llmqueue.ops.local_cluster import LocalCluster, run_dir
from llmqueue.ops.registry import NO_WORKER
from llmqueue.producer import Producer
from llmqueue.queue.ledger import BatchStatus
from llmqueue.queue.spend_report import read_spending
from llmqueue.settings import Settings

if TYPE_CHECKING:
    from llmqueue.batches.batch_api_tier import BatchApiTier

HELD_READ_EVERY = 2.0
"""Seconds between two reads of why the spending limits hold the batch's jobs."""
REGISTRY_LOOK_EVERY = 1.0
"""Seconds between two looks for the run's first worker in the worker registry (a scan of Redis's
keys, which on a shared Redis may be many), until it is seen."""


@dataclass
class LastLook:
    """The batch as the run last looked at it (every 0.1 s while its workers run), for what an
    interrupted run says: its ``running`` jobs are the calls in flight that Ctrl-C abandons."""

    status: BatchStatus | None = None

    @property
    def in_flight(self) -> int:
        return 0 if self.status is None else self.status.running


@dataclass
class RunSummary:
    batch_id: str
    status: BatchStatus
    output: Path
    failures: list[str]
    """The first of the lines that did not succeed (``custom_id: reason``)."""
    failure_count: int | None = None
    """How many did not succeed, when ``failures`` keeps only the first (a streamed output)."""
    workers_started: int | None = None
    """Worker processes the run started, when fewer than ``--workers`` (``llmqueue.batches.worker_ramp``)."""

    @property
    def failures_total(self) -> int:
        return len(self.failures) if self.failure_count is None else self.failure_count

    @property
    def ok(self) -> bool:
        return self.status.total > 0 and self.status.succeeded == self.status.total


async def run_batch(
    options: RunOptions, settings: Settings, console: Console, last_look: LastLook | None = None
) -> RunSummary:
    """Run a batch file end to end; see the module docstring. ``last_look`` is kept up to date."""
    batch_id = options.batch_id = _batch_id(options)  # a made one too, for the command's resume hint
    if options.output.is_dir():  # found out only once every line had been paid for
        raise LLMQueueError(
            f"--output {options.output} is a directory: give a file, e.g. {options.output / 'results.jsonl'}"
        )
    if not options.resume:
        assert options.file is not None
        require_requests(options.file)  # a missing or empty file stops the run before anything starts
    use_cache = options.cache and settings.cache.enabled
    if use_cache:
        await _check_cache(options, settings)
    data_dir = (
        run_dir(batch_id) if options.redis_url is None else Path(tempfile.mkdtemp(prefix="llmqueue-run-"))
    )
    # An embedded run's lock is its directory's, taken before its Redis starts on that directory.
    with DirectoryLock(data_dir, batch_id) if options.redis_url is None else contextlib.nullcontext():
        return await _run_locked(
            options, settings, console, batch_id, data_dir, use_cache, last_look or LastLook()
        )


async def _run_locked(
    options: RunOptions,
    settings: Settings,
    console: Console,
    batch_id: str,
    data_dir: Path,
    use_cache: bool,
    last_look: LastLook,
) -> RunSummary:
    finished = resumable = stopped_by_budget = False
    workers_started: int | None = None
    tier: BatchApiTier | None = None
    if options.via == "batch-api":
        # Imported only here: it loads LiteLLM, seconds of CPU a live run spends in its workers instead.
        with collector_paused():
            from llmqueue.batches.batch_api_tier import BatchApiTier

        tier = BatchApiTier(options, settings, batch_id, use_cache)
    try:
        cluster = LocalCluster(
            redis_url=options.redis_url,
            workers=1 if tier is not None else options.workers,  # idle unless lines fall back to live
            data_dir=data_dir,
            worker_env=_worker_env(options),
            stop_timeout=settings.worker.shutdown_grace + 15,
            temporary_dir=options.redis_url is not None,
            # Its workers take no job until the batch exists: on a shared Redis they would take other
            # batches' jobs for a run the check may still refuse.
            gated=True,
        )
        with cluster:
            # Checked while Redis and the first worker start (LiteLLM's import takes that worker seconds):
            # a bad line still stops the run before anything is queued or taken, and the first call waits
            # on whichever of the two ends last, not on both one after the other.
            check, ahead = _check_file(options, batch_id, settings, tier)
            async with (
                Producer(settings, redis_url=cluster.redis_url) as producer,
                _redis_lock(producer, batch_id, shared=options.redis_url is not None) as lock,
            ):
                batches = Batches(producer.store, producer.settings)
                source = await _source_file(batches, options, batch_id)
                resumable = options.resume  # a new run's, once its batch exists (a refusal leaves nothing)
                await _check_same_tier(batches, options, batch_id)
                if tier is not None:
                    resumable = True  # the tier submits to the provider as it goes: keep what it did
                    cluster.open_gate()
                    status = await tier.run(batches, source, console)
                    failures = await write_results(batches.results(batch_id), options.output)
                    finished = True
                    return RunSummary(
                        batch_id=batch_id, status=status, output=options.output, failures=failures
                    )
                async with _answers_for(settings, options, producer, use_cache) as answered_from:
                    feeder = await _window_feeder(
                        batches,
                        options,
                        settings,
                        source,
                        batch_id,
                        use_cache,
                        answered_from,
                        console,
                        check,
                        ahead,
                    )
                    resumable = True
                    await feeder.start(check.lines if check is not None and ahead is None else None)
                    if check is None:
                        feeder.count_total()  # in a thread: the first lines wait on no reading of the file
                    cluster.open_gate()
                    if options.resume and (options.max_cost is not None or options.max_tokens is not None):
                        again = await batches.retry_cancelled(
                            batch_id, max_cost=options.max_cost, max_tokens=options.max_tokens
                        )
                        if again:
                            console.print(f"{again} cancelled job(s) queued again under the new budget")
                    writer = OrderedWriter(producer.store, batch_id, options.output)
                    await writer.open()
                    complete = False
                    try:
                        feeding = _Feeding(feeder, writer, options, settings, console, last_look, ahead)
                        status = await _watch(batches, batch_id, cluster, console, producer, lock, feeding)
                        stopped_by_budget = status.budget_exceeded and status.cancelled > 0
                        if stopped_by_budget:
                            await writer.snapshot()  # its cancelled jobs stay in Redis, for --resume
                        else:
                            await writer.drain(final=True)
                            complete = True
                    finally:
                        writer.close(complete=complete)
                failures, failure_count = writer.failures, writer.failure_count
                if cluster.workers_waiting:
                    workers_started = cluster.workers_started
                finished = True
    finally:
        # Keep the data only of a run that was interrupted after it began, or that its budget stopped:
        # that is what --resume needs.
        if (finished and not stopped_by_budget) or options.redis_url is not None or not resumable:
            shutil.rmtree(data_dir, ignore_errors=True)
    return RunSummary(
        batch_id=batch_id,
        status=status,
        output=options.output,
        failures=failures,
        failure_count=failure_count,
        workers_started=workers_started,
    )


def _check_file(
    options: RunOptions, batch_id: str, settings: Settings, tier: BatchApiTier | None
) -> tuple[FileCheck | None, CheckAhead | None]:
    """Check every line of a new run's file (unless ``--skip-invalid``): a bad one stops the run before
    anything is queued. A big file is checked ahead of its feeding instead (``check_ahead``): only its
    first lines before anything is queued. None when the file was not checked (or not yet whole)."""
    if options.resume or options.skip_invalid:
        return None, None
    assert options.file is not None
    line_options: dict[str, Any] = {
        "batch_id": batch_id,
        "default_model": options.model,
        "llm_config": options.llm_config,
        "refuse": lambda job: submission_refusal(job, settings),
    }
    if tier is None and checks_ahead(options.file, settings.batch.check_first_bytes):
        ahead = CheckAhead(options.file, **line_options).start()
        check = ahead.wait_for_head()
        if ahead.unreadable is not None:
            raise ahead.unreadable
        if not check.ok:  # nothing is queued yet: name every bad line, as a whole check does
            check = ahead.join()
    else:
        ahead, check = None, check_file(options.file, **line_options)
    if not check.ok:
        raise invalid_file_error(check, options.file)
    return check, ahead


async def _check_cache(options: RunOptions, settings: Settings) -> None:
    """A cache that cannot work stops the run before anything starts (workers would fail one by one)."""
    if settings.cache.backend == "redis":
        if options.redis_url is None:
            raise CacheError(
                '[cache] backend = "redis" keeps answers in the Redis of the run, and `llmqueue run` '
                'removes its embedded Redis afterwards: use backend = "disk", give --redis-url, or --no-cache'
            )
        return
    store = DiskStore(
        settings.cache.resolved_dir(),
        ttl=settings.cache.ttl,
        max_bytes=int(settings.cache.max_size_mb * 2**20),
    )
    await store.close()


@contextlib.asynccontextmanager
async def _answers_for(
    settings: Settings, options: RunOptions, producer: Producer, use_cache: bool
) -> AsyncIterator[tuple[CacheStore, Settings] | None]:
    """The response cache and the workers' settings, for the run to answer the lines the cache holds as
    it submits them: a line's key is then the key its workers would look up. None when the run cannot
    know their [llm] settings (an LLM_* in their environment it does not lay over its own)."""
    unknown = [name for name in options.worker_env if name.startswith("LLM_") and name not in WORKER_LLM_ENV]
    if not use_cache or unknown:
        yield None
        return
    workers = with_workers_llm(settings, options.worker_env)
    store = open_store(workers.cache, producer.redis)
    try:
        yield store, workers
    finally:
        await store.close()


async def _check_same_tier(batches: Batches, options: RunOptions, batch_id: str) -> None:
    """A resumed batch goes on through the tier it started in (the other would call for its lines twice)."""
    if not options.resume:
        return
    started = await batches.redis.hget(keys.batch(batch_id), "via")
    via = started.decode() if started else "live"
    if via != options.via:
        raise LLMQueueError(f"batch {batch_id} was started with --via {via}: resume it with --via {via}")


def _announce(console: Console, batch_id: str, report: SubmitReport) -> None:
    console.print(
        f"batch [bold]{batch_id}[/bold]: {report.submitted - report.cached} job(s) queued"
        + (f", {report.cached} answered from the cache" if report.cached else "")
        + (f", {report.already_known} already queued or done" if report.already_known else "")
        + (f", {len(report.rejected)} line(s) rejected" if report.rejected else "")
    )


async def _window_feeder(
    batches: Batches,
    options: RunOptions,
    settings: Settings,
    source: Path,
    batch_id: str,
    use_cache: bool,
    answered_from: tuple[CacheStore, Settings] | None,
    console: Console,
    check: FileCheck | None,
    ahead: CheckAhead | None,
) -> WindowFeeder:
    """Check the file as ``submit_file`` does and make the feeder of its window (not started yet)."""
    queueing = f"batch [bold]{batch_id}[/bold]: queueing {source}"
    max_cost = options.max_cost
    if options.resume and max_cost is None:
        # The batch keeps its budget: a resume's price check is made against it (a run stopped for a
        # model without a price would otherwise send that model's lines, uncounted, on resume).
        stored = await batches.redis.hget(keys.batch(batch_id), "max_cost")
        max_cost = float(stored) if stored is not None else None
    line_options = await batches.prepare_submission(
        source,
        batch_id,
        default_model=options.model,
        llm_config=options.llm_config,
        # A new run's file was checked before anything started: not read a second time for it.
        skip_invalid=options.skip_invalid or not options.resume,
        max_cost=max_cost,
        max_tokens=options.max_tokens,
        priority=options.priority,
        weight=options.weight,
        on_queueing=lambda: console.print(queueing),
        checked=check,
    )
    slots = options.workers * (options.concurrency or settings.worker.max_jobs)
    window = window_size(rpm=options.rpm or settings.llm.rpm, slots=slots, override=settings.batch.window)
    return WindowFeeder(
        batches,
        batch_id,
        source,
        iter_jobs(source, **line_options, priority=options.priority),
        window=window,
        cache=use_cache,
        answered_from=answered_from,
        checked_through=None if ahead is None else ahead.checked_through,
    )


@dataclass
class _Feeding:
    """What a run does at each look at its batch: feed the window, write the results that are in order."""

    feeder: WindowFeeder
    writer: OrderedWriter
    options: RunOptions
    settings: Settings
    console: Console
    last_look: LastLook
    ahead: CheckAhead | None
    announced: bool = False

    async def step(self, status: BatchStatus) -> None:
        self.last_look.status = status
        if self.ahead is not None:
            await self._follow_check(self.ahead)
        await self.feeder.top_up()
        if self.feeder.exhausted and not self.announced:
            self.announced = True
            report = self.feeder.report
            _announce(self.console, report.batch_id, report)
            if report.rejected:
                rejects = self.options.rejects or self.options.output.with_suffix(".rejected.jsonl")
                write_rejects(report.rejected, rejects)
                shown = escape(str(rejects))
                self.console.print(f"{len(report.rejected)} line(s) rejected, written to {shown}")
        await self.writer.drain()

    async def _follow_check(self, ahead: CheckAhead) -> None:
        """A file checked while it runs: stop at its first bad line; once it is read whole, the batch's
        total is known, and the budgets see every model it calls."""
        batch_id = self.feeder.batch_id
        if ahead.failed:
            error = await ahead.stop_error(batch_id, self.feeder.report.submitted)
            await self.feeder.declare(ahead.check.valid)  # the jobs it holds, as status shows them
            raise error
        if not ahead.done:
            return
        self.ahead = None
        await self.feeder.declare(ahead.check.lines)
        max_cost = self.options.max_cost
        if max_cost is not None or self.settings.budget.active:
            from llmqueue.llm.prices import price_refusal  # imports LiteLLM

            refusal = price_refusal(lambda: ahead.check.samples.values(), self.settings, max_cost=max_cost)
            if refusal is not None:
                raise RunStoppedError(
                    f"{refusal}. The file is large, so it was checked while its first lines ran: the run "
                    f"stopped; the {self.feeder.report.submitted} line(s) it had queued stay in the batch, "
                    f"and those answered are not sent again. Once every model has a price (or its lines "
                    f"are gone from the file), resume with: {RunStoppedError.resume_here()}",
                    batch_id,
                )


async def _watch(
    batches: Batches,
    batch_id: str,
    cluster: LocalCluster,
    console: Console,
    producer: Producer,
    lock: RedisRunLock | None,
    feeding: _Feeding,
) -> BatchStatus:
    ramp, registry_look_at = WorkerRamp(), -math.inf
    held = _HeldNotice(producer, batch_id)
    with BatchProgress(console) as progress:
        told_starting = False

        def on_stall(reason: str) -> None:
            # With "no worker", the run's workers are alive (check_workers raises otherwise): they are
            # starting, and `llmqueue worker` is no advice; said once, however the marks change. A pause
            # (`llmqueue pause`) is said as it is.
            nonlocal told_starting
            if not reason.startswith(NO_WORKER):
                progress.note(reason)
            elif not told_starting:
                told_starting = True
                progress.note(cluster.starting_message())

        # Its own workers' start is told at once (their marks are no reason to wait): see on_stall.
        async for status in batches.follow(batch_id, interval=0.1, on_stall=on_stall, starting_patience=0):
            await feeding.step(status)
            progress.update(status)
            for reason in await held.new_reasons():
                progress.warn(f"jobs of batch {batch_id} are held: {reason} (see `llmqueue status`)")
            cluster.check_workers()
            if lock is not None:
                await lock.refresh()
            if cluster.workers_waiting:
                now = time.monotonic()
                if ramp.first_up_at is None and now >= registry_look_at:
                    registry_look_at = now + REGISTRY_LOOK_EVERY
                    took = await cluster.first_worker_start(producer.redis)
                    if took is None and cluster.embedded and ramp.calls_made(status) > 0:
                        # Only the run's own workers call through a private Redis: it is up, though
                        # not seen (on a shared one, another's calls would say nothing of it).
                        took = cluster.seconds_since_first_start()
                    if took is not None:
                        ramp.first_up(start_seconds=took, now=now)
                if ramp.due(status, now=now):
                    cluster.start_other_workers()
    return status


class _HeldNotice:
    """The spending limits' reasons for holding jobs of the batch, each told once (read every few s)."""

    def __init__(self, producer: Producer, batch_id: str) -> None:
        self.producer, self.batch_id = producer, batch_id
        self.told: set[str] = set()
        self.read_at = -math.inf

    async def new_reasons(self) -> list[str]:
        if not self.producer.settings.budget.active or time.monotonic() - self.read_at < HELD_READ_EVERY:
            return []
        self.read_at = time.monotonic()
        view = await read_spending(self.producer.redis, time.time(), batch_id=self.batch_id)
        new = [reason for reason in view["held_reasons"] if reason not in self.told]
        self.told.update(new)
        return new


@contextlib.asynccontextmanager
async def _redis_lock(
    producer: Producer, batch_id: str, *, shared: bool
) -> AsyncIterator[RedisRunLock | None]:
    """The run lock in a shared Redis (``--redis-url``); an embedded Redis is locked by its directory."""
    if not shared:
        yield None
        return
    lock = RedisRunLock(producer.redis, batch_id)
    await lock.acquire()
    try:
        yield lock
    finally:
        await lock.release()


def _batch_id(options: RunOptions) -> str:
    if options.resume:
        if not options.batch_id:
            raise LLMQueueError("--resume needs the batch id to resume")
        return check_batch_id(options.batch_id)
    if options.file is None:
        raise LLMQueueError("give the JSONL file to run, or --resume BATCH")
    batch_id = check_batch_id(options.batch_id) if options.batch_id else new_batch_id(options.file)
    if options.redis_url is None and run_dir(batch_id).exists():
        with DirectoryLock(run_dir(batch_id), batch_id):  # a run going on now says so
            pass
        raise LLMQueueError(
            f"batch {batch_id} was started before and not finished: use `llmqueue run --resume {batch_id}`"
        )
    return batch_id


async def _source_file(batches: Batches, options: RunOptions, batch_id: str) -> Path:
    if not options.resume:
        assert options.file is not None
        return options.file
    try:
        status = await batches.status(batch_id)
    except LLMQueueError:
        where = "that Redis" if options.redis_url else f"the embedded Redis of {run_dir(batch_id)}"
        # An embedded run killed before its batch began leaves a directory with no batch; it is removed
        # on the way out (nothing to resume), so the file can be run again under this id.
        again = (
            f"; run the file again: llmqueue run FILE --batch {batch_id}" if options.redis_url is None else ""
        )
        raise LLMQueueError(f"nothing to resume: batch {batch_id} is not in {where}{again}") from None
    source = Path(options.file or status.source or "")
    if not source.is_file():
        raise LLMQueueError(f"the batch's input file {source} is gone; pass it again: run FILE --resume")
    return source


def _worker_env(options: RunOptions) -> dict[str, str]:
    env = dict(options.worker_env)
    if options.config is not None:
        env["LLMQUEUE_CONFIG"] = str(options.config.resolve())
    if options.litellm_config is not None:
        env["LLMQUEUE_LITELLM_CONFIG"] = str(options.litellm_config.resolve())
    if options.model:
        env["LLM_MODEL"] = options.model
    if options.rpm is not None:
        env["LLM_RPM"] = str(options.rpm)
    if options.tpm is not None:
        env["LLM_TPM"] = str(options.tpm)
    if options.concurrency is not None:
        env["WORKER_MAX_JOBS"] = str(options.concurrency)
    if options.cache_dir is not None:
        env["CACHE_DIR"] = str(options.cache_dir.resolve())
    return env
