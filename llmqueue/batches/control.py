"""Batches: a file of requests submitted as one unit, with totals, budgets, cancel and retry.

A batch is a hash of settings and running totals (``keys.batch``), its job ids scored by input
line (``keys.batch_jobs``, a sorted set), their custom ids (``keys.batch_custom_ids``) and what each
asks of the provider, hashed (``keys.batch_fingerprints``). Job ids are derived from the batch id and
the line number, so submitting the same file to the same batch again (a resumed run) queues only what
is not queued or done yet; a file whose lines ask other things than the batch's jobs of those line
numbers (another file, an edited line, another ``--model``) is refused, since those jobs' answers would
be taken for theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio.client import Pipeline

from llmqueue import keys
from llmqueue.batches.files import (
    LineError,
    Refuser,
    check_file,
    invalid_file_error,
    iter_jobs,
    require_requests,
)
from llmqueue.cache import CacheStore, job_cache_key, read_answer
from llmqueue.errors import BatchError, BatchFileError, BatchStalledError
from llmqueue.llm.policy import submission_refusal
from llmqueue.llm.request import job_model
from llmqueue.models import PRIORITIES, AttemptError, Job, JobResult, Timings
from llmqueue.ops.registry import no_worker_reason
from llmqueue.queue.ledger import BatchLedger, BatchStatus
from llmqueue.queue.ready import set_weight
from llmqueue.queue.scripts import lane_of
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings

BATCH_ID_PATTERN = re.compile(r"^[\w.@-]{1,100}$")
_CHUNK = 1000
STALL_CHECK_SECONDS = 5.0
"""A batch that finished no job for this long is checked for what holds it up (and again as often)."""


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


class Batches:
    """Batch operations on one queue, through a :class:`JobStore`."""

    def __init__(self, store: JobStore, settings: Settings | None = None) -> None:
        """``settings``, when they are the workers', let submission refuse what workers would refuse."""
        self.store = store
        self.settings = settings
        self.redis = store.redis
        self.ledger = BatchLedger(store.redis)

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
        """Check (unless ``skip_invalid``) and enqueue every request of a JSONL file as one batch.

        By default a file with any bad line enqueues nothing and raises InvalidBatchFileError; with
        ``skip_invalid`` the good lines are enqueued and the bad ones returned in the report. A batch
        submitted again is first checked for lines that ask other things than its jobs of those line
        numbers (BatchError, nothing enqueued). The file is streamed (twice, or three times to a known
        batch), never held in memory. ``priority`` (0-9, higher first) is that of lines
        that set none; ``weight`` is the batch's share against other batches of the same priority
        (a batch of weight 2 gets twice the jobs of a batch of weight 1 while both have jobs ready).
        ``cache`` lets workers answer lines from the response cache (and keep their answers there).
        With ``answered_from``, a response cache and the settings of the workers that use it, lines it
        holds are answered here and never queued (``llmqueue run``: a rerun needs no worker for what is
        already known); a cache that cannot be read answers nothing (the workers look again).
        ``on_queueing()`` is called once the file is checked, before anything is queued (to say the
        batch id first: a submission cut short is completed by submitting again to the same id).
        """
        check_batch_id(batch_id)
        if not weight > 0:
            raise BatchError(f"weight must be above 0, got {weight!r}")
        options: dict[str, Any] = {
            "batch_id": batch_id,
            "default_model": default_model,
            "llm_config": llm_config,
            "refuse": self._refuser(),
        }
        if not skip_invalid:
            check = check_file(path, **options)
            if not check.ok:
                raise invalid_file_error(check, path)
        require_requests(path)
        if max_cost is not None and self.settings is not None:
            from llmqueue.llm.prices import budget_refusal  # imports LiteLLM

            jobs = (item for item in iter_jobs(path, **options) if isinstance(item, Job))
            refusal = budget_refusal(jobs, self.settings)
            if refusal is not None:
                raise BatchError(refusal)
        await self._refuse_changed_lines(path, batch_id, iter_jobs(path, **options, priority=priority))
        if on_queueing is not None:
            on_queueing()
        await self._create(batch_id, source=path, max_cost=max_cost, max_tokens=max_tokens, weight=weight)
        report = SubmitReport(batch_id=batch_id, submitted=0, already_known=0, rejected=[])
        chunk: list[Job] = []
        for item in iter_jobs(path, **options, priority=priority):
            if isinstance(item, LineError):
                report.rejected.append(item)
                continue
            item.cache = cache
            chunk.append(item)
            if len(chunk) >= _CHUNK:
                await self._enqueue_chunk(batch_id, chunk, report, answered_from)
                chunk = []
        if chunk:
            await self._enqueue_chunk(batch_id, chunk, report, answered_from)
        if report.submitted + report.already_known == 0:
            await self._forget(batch_id)
            shown = "; ".join(f"line {e.line}: {e.reason}" for e in report.rejected[:3])
            raise BatchFileError(
                f"{path}: none of its {len(report.rejected)} request line(s) is valid ({shown})"
            )
        await self.redis.hset(
            keys.batch(batch_id), "total", await self.redis.zcard(keys.batch_jobs(batch_id))
        )
        return report

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

    def _refuser(self) -> Refuser | None:
        settings = self.settings
        if settings is None:
            return None
        return lambda job: submission_refusal(job, settings)

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's counts, usage, cost, throughput and ETA. Raises BatchError for an unknown batch."""
        return await self.ledger.status(batch_id)

    async def results(self, batch_id: str) -> AsyncIterator[tuple[str, str, JobResult | None]]:
        """``(job_id, custom_id, result or None)`` for every job of the batch, in input order."""
        await self.status(batch_id)
        start = 0
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                return
            job_ids = [member.decode() for member in members]
            custom_ids = await self.redis.hmget(keys.batch_custom_ids(batch_id), job_ids)
            found = await self.store.get_results(job_ids)
            for job_id, custom_id, result in zip(job_ids, custom_ids, found, strict=True):
                yield job_id, custom_id.decode() if custom_id else "", result
            start += len(members)

    async def cancel(self, batch_id: str, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Cancel the batch: queued and retry-waiting jobs end as cancelled now, running ones finish.

        Workers also check the batch's cancel flag before each start, so a job picked up while this
        runs is cancelled too. Works in chunks of 1,000 jobs, a few round trips each, calling
        ``on_progress(jobs looked at, jobs cancelled)`` after each. Returns how many jobs it cancelled.
        """
        await self.status(batch_id)
        await self.redis.hset(keys.batch(batch_id), "cancel_requested", 1)
        # A Batch API batch's jobs wait at the provider, not in the queue: they end as cancelled here
        # (an answer its process stores later is not kept: a result is stored once).
        at_provider = await self.redis.hget(keys.batch(batch_id), "via") == b"batch-api"
        cancelled = seen = 0
        start = 0
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                return cancelled
            job_ids = [member.decode() for member in members]
            cancelled += await self._cancel_chunk(batch_id, job_ids, at_provider=at_provider)
            seen += len(job_ids)
            start += len(members)
            if on_progress is not None:
                on_progress(seen, cancelled)

    async def _cancel_chunk(self, batch_id: str, job_ids: list[str], *, at_provider: bool = False) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.result(job_id), keys.arq_in_progress(job_id))
            found = await pipe.execute()
        waiting = [job_id for job_id, count in zip(job_ids, found, strict=True) if not count]
        if not waiting:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in waiting:
                pipe.zrem(self.store.queue_name, job_id)
            removed = [
                job_id for job_id, n in zip(waiting, await pipe.execute(), strict=True) if n or at_provider
            ]
        if not removed:
            return 0
        states = await self.store.read_waiting_many(removed)
        results = [
            (self._cancelled_result(job_id, batch_id, failures, queued_at), bool(failures))
            for job_id, (failures, queued_at) in zip(removed, states, strict=True)
        ]
        stored = await self.store.finish_many(results)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in removed:
                pipe.delete(keys.arq_job(job_id), keys.arq_retry(job_id))
            await pipe.execute()
        return sum(stored)

    async def retry_failed(self, batch_id: str) -> int:
        """Queue the batch's failed jobs again, with a fresh retry budget. Returns how many."""
        return await self._requeue(batch_id, "failed")

    async def retry_cancelled(self, batch_id: str, *, max_cost: float | None = None) -> int:
        """Queue the batch's cancelled jobs again (a cancel or its budget stopped them), with
        ``max_cost`` (USD) as its budget when given. Returns how many.

        Raises BatchError when the batch's budget is still spent: its jobs would end cancelled again.
        """
        if max_cost is not None:
            await self.redis.hset(keys.batch(batch_id), "max_cost", max_cost)
        status = await self.status(batch_id)
        if status.budget_exceeded:
            raise BatchError(
                f"batch {batch_id} spent ${status.cost:.4f} of its budget ({_budget_words(status)}): "
                "give a higher one to go on (--max-cost USD)"
            )
        return await self._requeue(batch_id, "cancelled")

    async def _requeue(self, batch_id: str, status_name: str) -> int:
        await self.status(batch_id)
        jobs: list[Job] = []
        async for _job_id, _custom_id, result in self.results(batch_id):
            if result is not None and result.status == status_name and result.request:
                jobs.append(Job.model_validate(result.request))
        for start in range(0, len(jobs), _CHUNK):
            chunk = jobs[start : start + _CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*[keys.result(job.id) for job in chunk])
                pipe.delete(*[keys.done(job.id) for job in chunk])
                pipe.hincrby(keys.batch(batch_id), status_name, -len(chunk))
                pipe.hdel(keys.batch(batch_id), "cancel_requested")
                await pipe.execute()
            await self.store.enqueue(chunk)
        return len(jobs)

    async def follow(
        self,
        batch_id: str,
        interval: float = 0.5,
        on_stall: Callable[[str], None] | None = None,
    ) -> AsyncIterator[BatchStatus]:
        """Yield the batch's status now and every ``interval`` seconds, the last one when it is done.

        When no job finished for ``STALL_CHECK_SECONDS``, it looks for why: no live worker on the queue
        is told to ``on_stall`` (once, and again if it comes back after workers were seen); jobs that are
        neither queued, running nor finished raise BatchStalledError, as the batch can never be done.
        """
        progress_at, finished, warned = time.monotonic(), -1, None
        while True:
            status = await self.status(batch_id)
            yield status
            if status.done:
                return
            now = time.monotonic()
            if status.finished != finished:
                progress_at, finished = now, status.finished
            elif now - progress_at >= STALL_CHECK_SECONDS:
                progress_at = now  # checked again after as long, not at every poll
                reason = await self.stall_reason(batch_id)
                if reason != warned and reason is not None and on_stall is not None:
                    on_stall(reason)
                warned = reason
            await asyncio.sleep(interval)

    async def stall_reason(self, batch_id: str) -> str | None:
        """Why the batch is not progressing now, if something other than waiting explains it.

        Raises BatchStalledError when some of its jobs are neither queued, running nor finished (lost:
        a submission cut short, a job deleted); returns the reason when no worker is running.
        """
        lost = await self.lost_jobs(batch_id)
        if lost:
            await asyncio.sleep(1.0)  # a job between two keys (retry_failed re-queueing it) is not lost
            lost = await self._without_trace(lost)
        if lost:
            # The commands keep the batch's tier: a Batch API batch's lines never go to live workers
            # (at live prices) without the user saying so.
            via = await self.redis.hget(keys.batch(batch_id), "via")
            tier = " --via batch-api" if via == b"batch-api" else ""
            raise BatchStalledError(
                f"batch {batch_id}: {len(lost)} job(s) are neither queued, running nor finished (e.g. "
                f"{lost[0]}), so it can never be done; submit its file again to the same batch "
                f"(`llmqueue submit FILE --batch {batch_id}{tier}` or "
                f"`llmqueue run --resume {batch_id}{tier}`) to queue them"
            )
        interval = self.settings.worker.heartbeat_interval if self.settings else 5.0
        return await no_worker_reason(self.redis, self.store.queue_name, heartbeat_interval=interval)

    async def lost_jobs(self, batch_id: str) -> list[str]:
        """Ids of the batch's jobs with no result and no queued job behind them."""
        lost: list[str] = []
        start = 0
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                return lost
            lost += await self._without_trace([member.decode() for member in members])
            start += len(members)

    async def _without_trace(self, job_ids: list[str]) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.result(job_id), keys.arq_job(job_id))
            found = await pipe.execute()
        return [job_id for job_id, count in zip(job_ids, found, strict=True) if not count]

    async def wait(
        self,
        batch_id: str,
        on_progress: Callable[[BatchStatus], None] | None = None,
        interval: float = 0.5,
        on_stall: Callable[[str], None] | None = None,
    ) -> BatchStatus:
        """Return once every job of the batch has a result, calling ``on_progress`` each ``interval``
        (and ``on_stall`` as ``follow`` does)."""
        async for status in self.follow(batch_id, interval, on_stall):
            if on_progress is not None:
                on_progress(status)
        return status

    async def list_batches(self) -> list[str]:
        return [raw.decode() for raw in await self.redis.zrange(keys.batches(), 0, -1)]

    async def _create(
        self, batch_id: str, *, source: Path, max_cost: float | None, max_tokens: int | None, weight: float
    ) -> None:
        settings: dict[str, Any] = {"source": str(source.resolve())}
        if max_cost is not None:
            settings["max_cost"] = max_cost
        if max_tokens is not None:
            settings["max_tokens"] = max_tokens
        seconds, micros = await self.redis.time()  # Redis's clock: status measures elapsed time by it
        created = seconds + micros / 1e6
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.batch(batch_id), "created_at", created)
            pipe.hset(keys.batch(batch_id), mapping=settings)
            pipe.zadd(keys.batches(), {batch_id: created}, nx=True)
            set_weight(pipe, self.store.queue_name, lane_of(batch_id), weight)
            await pipe.execute()

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
    ) -> None:
        """Queue a chunk and register it with the batch in one transaction: ``total`` always counts
        what was queued, and a submission cut short (Redis full) is completed by submitting again."""
        if answered_from is not None:
            chunk = await self._answer_from_cache(batch_id, chunk, report, *answered_from)
            if not chunk:
                return
        members = keys.batch_jobs(batch_id)
        scores = await self.redis.zmscore(members, [job.id for job in chunk])
        new_members = sum(1 for score in scores if score is None)

        def register(pipe: Pipeline, jobs: Sequence[Job]) -> None:
            self._index(pipe, batch_id, jobs)
            pipe.hincrby(keys.batch(batch_id), "total", new_members)

        added = await self.store.enqueue(chunk, also=register)
        report.submitted += sum(added)
        report.already_known += len(added) - sum(added)

    async def _answer_from_cache(
        self, batch_id: str, chunk: list[Job], report: SubmitReport, cache: CacheStore, workers: Settings
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
                pipe.hincrby(keys.batch(batch_id), "total", len(hits))
                await pipe.execute()
            stored = await self.store.finish_many([(result, False) for result in answered])
            report.submitted += sum(stored)
            report.already_known += len(stored) - sum(stored)
            report.cached += sum(stored)
        return rest

    async def _index_chunk(self, batch_id: str, chunk: Sequence[Job]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._index(pipe, batch_id, chunk)
            await pipe.execute()

    @staticmethod
    def _index(pipe: Pipeline, batch_id: str, jobs: Sequence[Job]) -> None:
        # By line number, so a resubmission (a line fixed since) lands in input order, once.
        pipe.zadd(keys.batch_jobs(batch_id), {job.id: job.metadata["line"] for job in jobs})
        pipe.hset(
            keys.batch_custom_ids(batch_id),
            mapping={job.id: str(job.metadata.get("custom_id", "")) for job in jobs},
        )
        fingerprints = {job.id: request_fingerprint(job) for job in jobs}
        pipe.hset(keys.batch_fingerprints(batch_id), mapping=fingerprints)

    @staticmethod
    def _cancelled_result(
        job_id: str, batch_id: str, failures: list[AttemptError], queued_at: datetime
    ) -> JobResult:
        return JobResult(
            job_id=job_id,
            batch_id=batch_id,
            status="cancelled",
            attempts=len(failures),
            errors=[
                *failures,
                AttemptError(attempt=len(failures), kind="cancelled", message="the batch was cancelled"),
            ],
            timings=Timings(queued_at=queued_at),
        )


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


def _budget_words(status: BatchStatus) -> str:
    caps = [f"max ${status.max_cost:g}"] if status.max_cost is not None else []
    caps += [f"max {status.max_tokens} tokens"] if status.max_tokens is not None else []
    return ", ".join(caps)
