"""Submitting a batch: a file of requests (or the Batch API tier's jobs) registered and queued as one unit.

A batch is a hash of settings and running totals (``keys.batch``), its job ids scored by input
line (``keys.batch_jobs``, a sorted set), their custom ids (``keys.batch_custom_ids``) and what each
asks of the provider, hashed (``keys.batch_fingerprints``). Job ids are derived from the batch id and
the line number, so submitting the same file to the same batch again (a resumed run) queues only what
is not queued or done yet; a file whose lines ask other things than the batch's jobs of those line
numbers (another file, an edited line, another ``--model``) is refused, since those jobs' answers would
be taken for theirs.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from llmqueue import keys
from llmqueue.batches.blocks import BlockOptions, expand_window, store_blocks
from llmqueue.batches.files import (
    MAX_STORED_ERRORS,
    FileCheck,
    LineError,
    Refuser,
    check_file,
    invalid_file_error,
    iter_jobs,
    require_requests,
)
from llmqueue.batches.window_bounds import window_size
from llmqueue.cache import CacheStore, job_cache_key, read_answer
from llmqueue.errors import BatchError, BatchFileError
from llmqueue.llm.policy import submission_refusal
from llmqueue.llm.request import job_model
from llmqueue.models import PRIORITIES, Job, JobResult
from llmqueue.queue.ledger import BatchLedger
from llmqueue.queue.ready import set_weight
from llmqueue.queue.retention import keep_batch, queued_batch_ttl
from llmqueue.queue.scripts import lane_of
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings

BATCH_ID_PATTERN = re.compile(r"^[\w.@-]{1,100}$")
_CHUNK = 1000


@dataclass
class SubmitReport:
    batch_id: str
    submitted: int
    """Jobs newly queued by this call."""
    already_known: int
    """Jobs of the batch that were already queued, running or finished (a resumed submission)."""
    rejected: list[LineError]
    cached: int = 0
    """Of the jobs submitted, those answered from the response cache as they were submitted (not queued)."""
    held: int = 0
    """Jobs of the batch not queued yet: held in Redis in compressed blocks, queued by workers as the
    batch's window allows."""


class BatchSubmission:
    """The submitting side of :class:`llmqueue.batches.control.Batches`."""

    store: JobStore
    settings: Settings | None
    redis: Redis
    ledger: BatchLedger

    async def submit_file(
        self,
        path: Path,
        batch_id: str,
        *,
        default_model: str | None = None,
        llm_config: str | None = None,
        skip_invalid: bool = False,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        priority: int = PRIORITIES["batch"],
        weight: float = 1.0,
        cache: bool = True,
        answered_from: tuple[CacheStore, Settings] | None = None,
        on_queueing: Callable[[], None] | None = None,
    ) -> SubmitReport:
        """Check (unless ``skip_invalid``) and submit every request of a JSONL file as one batch.

        By default a file with any bad line submits nothing and raises InvalidBatchFileError; with
        ``skip_invalid`` the good lines are submitted and the bad ones returned in the report. A batch
        submitted again is first checked for lines that ask other things than its jobs of those line
        numbers (BatchError, nothing submitted). The file is streamed, never held in memory.

        The lines are stored in Redis once, in compressed blocks (``llmqueue.batches.blocks``), and a
        window of them is queued here; workers queue the next blocks as the batch's jobs finish
        (``[batch] window``), so Redis holds the file compressed, not every job at once. Submitting
        again to the same batch goes on from the last block queued, and queues again a job of the
        lines queued before that is neither queued, running nor finished (lost).

        ``priority`` (0-9, higher first) is that of lines that set none; ``weight`` is the batch's
        share against other batches of the same priority (a batch of weight 2 gets twice the jobs of a
        batch of weight 1 while both have jobs ready). ``cache`` lets workers answer lines from the
        response cache (and keep their answers there). With ``answered_from``, a response cache and
        the settings of the workers that use it, lines of the window queued here that it holds are
        answered here and never queued; a cache that cannot be read answers nothing (the workers look
        again). ``on_queueing()`` is called once the file is checked, before anything is stored (to
        say the batch id first: a submission cut short is completed by submitting again to the same id).
        """
        check_batch_id(batch_id)
        check = check_file(
            path,
            **self._line_options(batch_id, default_model, llm_config),
            max_errors=sys.maxsize if skip_invalid else MAX_STORED_ERRORS,
        )
        options = await self.prepare_submission(
            path,
            batch_id,
            default_model=default_model,
            llm_config=llm_config,
            skip_invalid=skip_invalid,
            max_cost=max_cost,
            max_tokens=max_tokens,
            priority=priority,
            weight=weight,
            on_queueing=on_queueing,
            checked=check,
        )
        report = SubmitReport(batch_id=batch_id, submitted=0, already_known=0, rejected=list(check.errors))
        if check.valid == 0:
            await self._forget(batch_id)
            raise no_valid_line_error(path, report.rejected)
        window = self._window()
        first, _ = await store_blocks(
            self,
            path,
            batch_id,
            BlockOptions(default_model, llm_config, priority, cache),
            window=window,
            total=check.valid,
            blank={error.line for error in check.errors},
            ttl=queued_batch_ttl(self.store.job_ttl, self.store.result_ttl),
        )
        if first > 0:
            await self._requeue_lost(path, batch_id, options, priority, cache, report, answered_from)
        await expand_window(
            self, batch_id, report, refuse=self.refuser(), owner="submit", answered_from=answered_from
        )
        listed = await self.redis.zcard(keys.batch_jobs(batch_id))
        report.held = max(0, check.valid - int(listed))
        return report

    def _window(self) -> int:
        """The window of a batch submitted here: ``[batch] window``, or one worker's slots and the rate
        of these settings (``window_size``)."""
        settings = self.settings
        if settings is None:
            return window_size(rpm=None, slots=0)
        return window_size(
            rpm=settings.llm.rpm, slots=settings.worker.max_jobs, override=settings.batch.window
        )

    async def _requeue_lost(
        self,
        path: Path,
        batch_id: str,
        options: dict[str, Any],
        priority: int,
        cache: bool,
        report: SubmitReport,
        answered_from: tuple[CacheStore, Settings] | None,
    ) -> None:
        """Queue again the jobs of the lines queued before (its blocks fed) that are neither queued,
        running nor finished (a payload expired, a submission cut short): the queue skips the others.
        Lines written to a file and dropped from Redis (``run``, ``results --collect``) are done."""
        fed_lines = await self.redis.hmget(keys.batch(batch_id), ["fed_blocks", "block_lines", "written"])
        last = int(fed_lines[0] or 0) * int(fed_lines[1] or 0)
        written = await self._last_written_line(batch_id, int(fed_lines[2] or 0))
        chunk: list[Job] = []
        for item in iter_jobs(path, **options, priority=priority):
            line = item.line if isinstance(item, LineError) else item.metadata["line"]
            if line > last:
                break
            if line <= written:
                continue
            if isinstance(item, Job):
                item.cache = cache
                chunk.append(item)
            if len(chunk) >= _CHUNK:
                await self._enqueue_chunk(batch_id, chunk, report, answered_from, count_total=False)
                chunk = []
        if chunk:
            await self._enqueue_chunk(batch_id, chunk, report, answered_from, count_total=False)

    async def _last_written_line(self, batch_id: str, written: int) -> int:
        """The line number of the last of the batch's first ``written`` jobs (its job list is scored
        by line), 0 when none is written."""
        if written <= 0:
            return 0
        last = await self.redis.zrange(keys.batch_jobs(batch_id), written - 1, written - 1, withscores=True)
        return int(last[0][1]) if last else 0

    async def prepare_submission(
        self,
        path: Path,
        batch_id: str,
        *,
        default_model: str | None,
        llm_config: str | None,
        skip_invalid: bool,
        max_cost: float | None,
        max_tokens: int | None,
        priority: int,
        weight: float,
        on_queueing: Callable[[], None] | None,
        checked: FileCheck | None = None,
    ) -> dict[str, Any]:
        """The checks of ``submit_file`` and the batch's creation, before its first job is queued;
        returns the keyword arguments of ``iter_jobs`` for its lines, less ``priority``. ``checked`` is
        the file's ``check_file`` with these options when the caller made it (``llmqueue run``)."""
        check_batch_id(batch_id)
        if not weight > 0:
            raise BatchError(f"weight must be above 0, got {weight!r}")
        options = self._line_options(batch_id, default_model, llm_config)
        check = checked
        if not skip_invalid and check is None:
            check = check_file(path, **options)
        if not skip_invalid and check is not None and not check.ok:
            raise invalid_file_error(check, path)
        require_requests(path)
        if self.settings is not None and (max_cost is not None or self.settings.budget.active):
            from llmqueue.llm.prices import price_refusal  # imports LiteLLM

            def jobs() -> Iterable[Job]:
                if check is not None:
                    return check.samples.values()
                return (item for item in iter_jobs(path, **options) if isinstance(item, Job))

            refusal = price_refusal(jobs, self.settings, max_cost=max_cost)
            if refusal is not None:
                raise BatchError(refusal)
        await self._refuse_changed_lines(path, batch_id, iter_jobs(path, **options, priority=priority))
        if on_queueing is not None:
            on_queueing()
        await self._create(batch_id, source=path, max_cost=max_cost, max_tokens=max_tokens, weight=weight)
        return options

    async def feed_chunk(
        self,
        batch_id: str,
        chunk: list[Job],
        report: SubmitReport,
        answered_from: tuple[CacheStore, Settings] | None,
    ) -> None:
        """Queue (or answer from the cache) and register a chunk of a batch whose ``total`` is already
        set (a windowed run: its total is the file's, set before the first chunk).

        A job the batch already lists is skipped: its keys may be gone (written to the run's output and
        dropped), and the queue would take it for a new one."""
        listed = await self.redis.zmscore(keys.batch_jobs(batch_id), [job.id for job in chunk])
        report.already_known += sum(1 for score in listed if score is not None)
        chunk = [job for job, score in zip(chunk, listed, strict=True) if score is None]
        if not chunk:
            return
        await self._enqueue_chunk(batch_id, chunk, report, answered_from, count_total=False)

    async def forget_if_empty(self, batch_id: str) -> None:
        """Remove a batch that got no job (a batch of nothing would never be done)."""
        await self._forget(batch_id)

    async def _refuse_changed_lines(
        self, path: Path, batch_id: str, items: Iterable[Job | LineError]
    ) -> None:
        """Raise BatchError, before anything is queued, if the batch exists and a line of ``items``
        asks something else than its job of the same line number did. ``items`` is read only for a batch
        that exists (``iter_jobs`` reads no line until iterated); a batch of an older
        version, without hashes, is not checked."""
        if not await self.redis.exists(keys.batch(batch_id)):
            return
        changed: list[int] = []
        chunk: list[Job] = []

        async def compare() -> None:
            stored = await self.redis.hmget(keys.batch_fingerprints(batch_id), [job.id for job in chunk])
            changed.extend(
                job.metadata["line"]
                for job, known in zip(chunk, stored, strict=True)
                if known is not None and known.decode() != request_fingerprint(job)
            )
            chunk.clear()

        for item in items:
            if isinstance(item, Job):
                chunk.append(item)
                if len(chunk) >= _CHUNK:
                    await compare()
        if chunk:
            await compare()
        if changed:
            shown = ", ".join(str(line) for line in changed[:10])
            more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
            raise BatchError(
                f"{path}: batch {batch_id} holds other requests for line(s) {shown}{more}: another "
                "file, an edited line, or options other than the batch was first submitted with "
                "(--model, --llm-config, --simulate-provider). Their answers would be taken for these "
                "lines, so nothing was enqueued. To go on with the batch, give its first file and "
                "options again; to run these lines, submit the file as a new batch (--batch NAME)"
            )

    async def register(self, batch_id: str, jobs: list[Job], *, source: Path) -> None:
        """Create the batch and list its jobs in input order without queueing them (the Batch API tier
        sends them to the provider itself, and stores their results as workers would)."""
        check_batch_id(batch_id)
        await self._refuse_changed_lines(source, batch_id, jobs)
        await self._create(batch_id, source=source, max_cost=None, max_tokens=None, weight=1.0)
        for start in range(0, len(jobs), _CHUNK):
            await self._index_chunk(batch_id, jobs[start : start + _CHUNK])
        await self.redis.hset(
            keys.batch(batch_id), "total", await self.redis.zcard(keys.batch_jobs(batch_id))
        )

    def _line_options(
        self, batch_id: str, default_model: str | None, llm_config: str | None
    ) -> dict[str, Any]:
        """The keyword arguments of ``iter_jobs`` and ``check_file`` for a batch's lines."""
        return {
            "batch_id": batch_id,
            "default_model": default_model,
            "llm_config": llm_config,
            "refuse": self.refuser(),
        }

    def refuser(self) -> Refuser | None:
        """Why the workers (when ``settings`` are theirs) would refuse a job, or None to let them say."""
        settings = self.settings
        if settings is None:
            return None
        return lambda job: submission_refusal(job, settings)

    async def enqueue_jobs(self, batch_id: str, jobs: Sequence[Job]) -> list[bool]:
        """Queue jobs submitted from code with ``batch_id``, creating the batch on its first jobs.

        They are listed in submission order and counted in its totals, as a file's lines are, so
        ``llmqueue status``, ``results``, ``cancel`` and ``forget`` know the batch. False for a job
        already known (queued, running or done), as ``JobStore.enqueue`` says.
        """
        check_batch_id(batch_id)
        await self._create(batch_id, source=None, max_cost=None, max_tokens=None, weight=1.0)
        added: list[bool] = []
        for start in range(0, len(jobs), _CHUNK):
            chunk = list(jobs[start : start + _CHUNK])
            added += await self._enqueue_listed(batch_id, chunk, by_line=False)
        return added

    async def _enqueue_listed(
        self, batch_id: str, chunk: list[Job], *, by_line: bool = True, count_total: bool = True
    ) -> list[bool]:
        keep = queued_batch_ttl(self.store.job_ttl, self.store.result_ttl)

        def register(pipe: Pipeline, jobs: Sequence[Job]) -> None:
            self._index(pipe, batch_id, jobs, by_line=by_line)
            if count_total:
                BatchLedger.count_total(pipe, batch_id)
            keep_batch(pipe, batch_id, keep)

        return await self.store.enqueue(chunk, also=register)

    async def _create(
        self,
        batch_id: str,
        *,
        source: Path | None,
        max_cost: float | None,
        max_tokens: int | None,
        weight: float,
    ) -> None:
        settings: dict[str, Any] = {} if source is None else {"source": str(source.resolve())}
        if max_cost is not None:
            settings["max_cost"] = max_cost
        if max_tokens is not None:
            settings["max_tokens"] = max_tokens

        async def create() -> None:
            seconds, micros = await self.redis.time()  # Redis's clock: status measures elapsed time by it
            created = seconds + micros / 1e6
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(keys.batch(batch_id), "created_at", created)
                if settings:
                    pipe.hset(keys.batch(batch_id), mapping=settings)
                pipe.zadd(keys.batches(), {batch_id: created}, nx=True)
                set_weight(pipe, self.store.queue_name, lane_of(batch_id), weight)
                keep_batch(pipe, batch_id, queued_batch_ttl(self.store.job_ttl, self.store.result_ttl))
                await pipe.execute()

        await self.store.acknowledged(create)

    async def _forget(self, batch_id: str) -> None:
        """Remove a batch that got no job (a batch of nothing would never be done)."""
        if not await self.redis.exists(keys.batch_jobs(batch_id)):
            await self.redis.delete(keys.batch(batch_id))
            await self.redis.zrem(keys.batches(), batch_id)

    async def _enqueue_chunk(
        self,
        batch_id: str,
        chunk: list[Job],
        report: SubmitReport,
        answered_from: tuple[CacheStore, Settings] | None,
        *,
        count_total: bool = True,
    ) -> None:
        """Queue a chunk and register it with the batch in one transaction: ``total`` always counts
        what was queued, and a submission cut short (Redis full) is completed by submitting again."""
        if answered_from is not None:
            cache, workers = answered_from
            chunk = await self._answer_from_cache(batch_id, chunk, report, cache, workers, count_total)
            if not chunk:
                return
        added = await self._enqueue_listed(batch_id, chunk, count_total=count_total)
        report.submitted += sum(added)
        report.already_known += len(added) - sum(added)

    async def _answer_from_cache(
        self,
        batch_id: str,
        chunk: list[Job],
        report: SubmitReport,
        cache: CacheStore,
        workers: Settings,
        count_total: bool = True,
    ) -> list[Job]:
        """Store the results of the chunk's lines the cache holds; return the others, to be queued.

        A line already known to the batch (a resubmission) is left to the queue, which knows whether it
        still needs an answer; one that already has a result keeps it (a job gets one result)."""
        known = await self.redis.zmscore(keys.batch_jobs(batch_id), [job.id for job in chunk])
        rest: list[Job] = []
        hits: list[Job] = []
        answered: list[JobResult] = []
        for job, score in zip(chunk, known, strict=True):
            llm = workers.llm_for(job.llm_config)
            response = None
            if job.cache and score is None:
                key = job_cache_key(job, llm)
                response = await read_answer(cache, key, instead="the workers will look again")
            if response is None:
                rest.append(job)
            else:
                hits.append(job)
                answered.append(JobResult.from_cache(job, job_model(job, llm), response))
        if answered:
            async with self.redis.pipeline(transaction=True) as pipe:
                self._index(pipe, batch_id, hits)
                if count_total:
                    BatchLedger.count_total(pipe, batch_id)
                await pipe.execute()
            stored = await self.store.finish_many([(result, False) for result in answered])
            report.submitted += sum(stored)
            report.already_known += len(stored) - sum(stored)
            report.cached += sum(stored)
        return rest

    async def _index_chunk(self, batch_id: str, chunk: Sequence[Job]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._index(pipe, batch_id, chunk)
            keep_batch(pipe, batch_id, queued_batch_ttl(self.store.job_ttl, self.store.result_ttl))
            await pipe.execute()

    @staticmethod
    def _index(pipe: Pipeline, batch_id: str, jobs: Sequence[Job], *, by_line: bool = True) -> None:
        if by_line:
            # By line number, so a resubmission (a line fixed since) lands in input order, once.
            pipe.zadd(keys.batch_jobs(batch_id), {job.id: job.metadata["line"] for job in jobs})
        else:
            # Jobs from code: in submission order (microseconds), each id at its first submission.
            first = time.time_ns() // 1000
            order = {job.id: first + index for index, job in enumerate(jobs)}
            pipe.zadd(keys.batch_jobs(batch_id), order, nx=True)
        pipe.hset(
            keys.batch_custom_ids(batch_id),
            mapping={job.id: str(job.metadata.get("custom_id", "")) for job in jobs},
        )
        fingerprints = {job.id: request_fingerprint(job) for job in jobs}
        pipe.hset(keys.batch_fingerprints(batch_id), mapping=fingerprints)


def no_valid_line_error(path: Path, rejected: Sequence[LineError]) -> BatchFileError:
    """The error of a file none of whose request lines is valid (a batch of nothing is not kept)."""
    shown = "; ".join(f"line {e.line}: {e.reason}" for e in rejected[:3])
    return BatchFileError(f"{path}: none of its {len(rejected)} request line(s) is valid ({shown})")


def check_batch_id(batch_id: str) -> str:
    if not BATCH_ID_PATTERN.match(batch_id):
        raise BatchError(f"invalid batch id {batch_id!r}: use 1-100 letters, digits, '_', '-', '.' or '@'")
    return batch_id


def request_fingerprint(job: Job) -> str:
    """What ``job`` asks of the provider (kind, model, settings group, messages or input, params),
    hashed: the same for a line submitted again, another for an edited line or another ``--model``."""
    asked = [job.kind, job.model, job.llm_config, job.messages, job.input, job.params]
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def new_batch_id(path: Path) -> str:
    """The file's name, the time and a random part: two files of one name submitted in the same second
    (two users' ``eval.jsonl``) would otherwise share a batch, and the second's lines, taken for the
    first's, would never run."""
    stem = re.sub(r"[^\w.-]", "-", path.stem)[:60] or "batch"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
