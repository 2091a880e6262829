"""The producer: submit jobs, await their results, cancel those not started.

Waiting costs no polling and no connection per wait: every wait of a producer, for the jobs it
submitted or for any other (``handle(id)``), is settled by one listener on one blocked connection
(``llmqueue.waits``); the producer's client holds at most ``MAX_CONNECTIONS`` connections, however
many jobs are awaited.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from llmqueue import keys
from llmqueue.connection import redis_client
from llmqueue.errors import (
    JobNotFoundError,
    JobValidationError,
    RedisUnavailableError,
    ResultTimeoutError,
)
from llmqueue.llm.policy import submission_refusal
from llmqueue.llm.structured import parse_answer, response_format_of
from llmqueue.models import Job, JobResult, parse_priority
from llmqueue.ops.registry import WorkerLook, look_for_workers
from llmqueue.queue.cancel import cancel_queued
from llmqueue.queue.job_stream import StreamEvent, read_stream
from llmqueue.queue.replication import replica_wait
from llmqueue.queue.store import JobStore
from llmqueue.redaction import redact_url
from llmqueue.settings import Settings, WorkerConfig, load_settings
from llmqueue.waits import GONE_CHECK, REDIS_DOWN, ResultWaits

JobLike = Job | Mapping[str, Any]
MAX_CONNECTIONS = 8
"""Connections a producer's own client opens at most; commands beyond them wait for a free one."""
NO_WORKER_NOTICE = 3.0
"""Seconds a result is awaited before the producer checks that some worker is running."""
CANCEL_REASON = "cancelled from code (Producer.cancel)"
logger = logging.getLogger("llmqueue.producer")
__all__ = ["GONE_CHECK", "MAX_CONNECTIONS", "JobHandle", "Producer"]


class JobHandle:
    """A submitted job. ``await handle.result()`` returns its final :class:`JobResult`."""

    def __init__(
        self, producer: Producer, job_id: str, *, via_inbox: bool, output: OutputRequest | None = None
    ) -> None:
        self.producer = producer
        self.job_id = job_id
        self._via_inbox = via_inbox
        self._output = output

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    async def result(self, timeout: float | None = None) -> JobResult:
        """The job's result, waiting up to ``timeout`` seconds (None: forever).

        Raises ResultTimeoutError if it has not arrived by then (the job itself keeps running), and
        JobNotFoundError when Redis no longer holds the job nor its result (it will never have one:
        Redis lost its data, or the id is unknown or expired); the message says which, when Redis
        can tell.
        """
        notice = asyncio.ensure_future(self._notice_no_worker())
        try:
            result = await asyncio.wait_for(
                self.producer.waits.wait(self.job_id, via_inbox=self._via_inbox), timeout
            )
        except TimeoutError:
            raise ResultTimeoutError(f"job {self.job_id} has no result after {timeout:g}s") from None
        finally:
            notice.cancel()
        if self._output is not None and result.ok:
            result.parsed = parse_answer(result.text, self._output.model)
        return result

    async def stream(self, after: str = "0") -> AsyncIterator[StreamEvent]:
        """The answer of a job submitted with ``params.stream: true`` as it comes: ``delta`` events
        (``event.text``), and a ``restart`` event when the job was retried after its stream began (the
        text before it is void). Ends when the provider has finished (``await handle.result()`` then
        returns the whole answer) or the job ended without streaming. After a reconnect, resume with
        ``after=`` the last event's ``id``."""
        redis = self.producer._streams()
        async for event in read_stream(redis, self.job_id, after=after, finished=self._finished):
            yield event

    async def _finished(self) -> bool:
        return await self.producer.store.get_result(self.job_id) is not None

    async def cancel(self) -> bool:
        """Cancel the job if it is still queued (or waiting for a retry): it will make no call, and
        its result is ``cancelled``. False when it is running, finished, or unknown."""
        return bool(await self.producer.cancel([self.job_id]))

    async def _notice_no_worker(self) -> None:
        """Log a warning if, after ``NO_WORKER_NOTICE`` seconds, no worker is running to do the job (a
        worker starting then is given until its patience runs out, and looked for again)."""
        await asyncio.sleep(NO_WORKER_NOTICE)
        look = await self.producer._look_for_workers()
        while look.wait_more is not None:  # a worker is starting (another may start meanwhile)
            # Not sooner than the looks are shared: the next one is looked up anew.
            await asyncio.sleep(max(look.wait_more, NO_WORKER_NOTICE) + 0.5)
            look = await self.producer._look_for_workers()
        if look.reason is not None and self.producer._first_report(look.reason):
            logger.warning("job %s is waiting: %s", self.job_id, look.reason)


class Producer:
    """Submits jobs to the queue and awaits their results. Use as ``async with Producer(...) as p:``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        redis: Redis | None = None,
    ) -> None:
        """``redis``: a client of your own (the producer then neither bounds nor closes it)."""
        self.settings = settings or load_settings()
        url = redis_url or self.settings.redis_url.get_secret_value()
        self._owns_redis = redis is None
        self.redis: Redis = redis if redis is not None else redis_client(url, max_connections=MAX_CONNECTIONS)
        self._url_for_errors = redact_url(url)
        self._url = url
        self._streams_redis: Redis | None = None
        worker = self.settings.worker
        self.store = JobStore(
            self.redis,
            queue_name=worker.queue_name,
            job_ttl=worker.job_ttl,
            result_ttl=worker.result_ttl,
            replicas=replica_wait(self.redis, self.settings, url),
        )
        self.inbox = keys.inbox(uuid.uuid4().hex)
        self.waits = ResultWaits(self.store, self.inbox, job_ttl=worker.job_ttl, result_ttl=worker.result_ttl)
        self._worker_check: tuple[float, asyncio.Future[WorkerLook]] | None = None
        self._reported_no_worker: str | None = None

    async def __aenter__(self) -> Producer:
        try:
            await self.redis.ping()
        except (RedisConnectionError, OSError) as exc:
            raise RedisUnavailableError(f"cannot reach Redis at {self._url_for_errors}: {exc}") from None
        await self.waits.remember_redis()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.waits.close()
        if self._streams_redis is not None:
            await self._streams_redis.aclose()
            self._streams_redis = None
        if self._worker_check is not None:
            self._worker_check[1].cancel()
        if self._owns_redis:
            await self.redis.aclose()

    def _streams(self) -> Redis:
        """The client job streams are read with: a blocked read holds its connection, so readers get a
        pool of their own, not bounded by ``MAX_CONNECTIONS`` (a client given to the producer is used
        as it is)."""
        if not self._owns_redis:
            return self.redis
        if self._streams_redis is None:
            self._streams_redis = redis_client(self._url)
        return self._streams_redis

    async def submit(self, job: JobLike, *, priority: int | str | None = None) -> JobHandle:
        """Queue one job. Submitting an id that is already queued, running or done does not run it again.

        ``priority`` (``batch``, ``default``, ``interactive`` or 0-9; higher runs first) overrides the
        job's own; a job that sets none is ``default``, ahead of batches.
        """
        (handle,) = await self.submit_many([job], priority=priority)
        return handle

    async def submit_many(
        self, jobs: Iterable[JobLike], *, priority: int | str | None = None
    ) -> list[JobHandle]:
        """Queue many jobs in pipelined round trips (thousands per round trip); ``priority`` as in submit.

        Jobs with a ``batch_id`` make (or join) that batch, as a file submitted with ``--batch`` does:
        ``llmqueue status``, ``results``, ``cancel`` and ``forget`` know it, and it expires with its
        results.
        """
        update: dict[str, Any] = {"reply_to": self.inbox}
        if priority is not None:
            try:
                update["priority"] = parse_priority(priority)
            except ValueError as exc:
                raise JobValidationError(str(exc)) from None
        outputs: dict[str, OutputRequest | None] = {}
        prepared: list[Job] = []
        for job in jobs:
            job, output = _with_schema_of_model(job)
            prepared.append(self._prepare(job, update))
            outputs[prepared[-1].id] = output
        added = dict(zip((job.id for job in prepared), await self._enqueue(prepared), strict=True))
        return [JobHandle(self, job.id, via_inbox=added[job.id], output=outputs[job.id]) for job in prepared]

    async def _enqueue(self, jobs: list[Job]) -> list[bool]:
        """Queue the jobs, those of a batch through it; whether each was new, in the order given."""
        by_batch: dict[str | None, list[Job]] = {}
        for job in jobs:
            by_batch.setdefault(job.batch_id, []).append(job)
        added: dict[str, bool] = {}
        for batch_id, group in by_batch.items():
            if batch_id is None:
                flags = await self.store.enqueue(group)
            else:
                from llmqueue.batches.control import Batches  # its import pulls in the batch files' code

                flags = await Batches(self.store, self.settings).enqueue_jobs(batch_id, group)
            added.update(zip((job.id for job in group), flags, strict=True))
        return [added[job.id] for job in jobs]

    def handle(self, job_id: str) -> JobHandle:
        """A handle for a job submitted earlier, by this or any other producer."""
        return JobHandle(self, job_id, via_inbox=False)

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel the jobs still queued or waiting for a retry; the ids cancelled.

        A job cancelled here is taken out of the queue in the same step a worker would take it, so it
        makes no provider call (nothing is paid for it); its result is ``cancelled`` (an error of kind
        ``cancelled``), counted in its batch, and its waits end with it. Jobs already running finish;
        finished and unknown ids are left alone. Thousands of ids take a few round trips per 1,000.
        """
        return await cancel_queued(self.store, list(dict.fromkeys(job_ids)), reason=CANCEL_REASON)

    async def as_completed(
        self, handles: Sequence[JobHandle], timeout: float | None = None
    ) -> AsyncIterator[JobResult]:
        """Yield results as the jobs finish, in finishing order.

        A job Redis no longer holds (it lost its data, or the id is unknown) ends only its own wait: the
        others go on, and once they are all yielded JobNotFoundError names every such job. Raises
        ResultTimeoutError for the jobs still without a result after ``timeout`` seconds (they keep
        running; ``cancel`` stops those still queued).
        """
        futures = [asyncio.ensure_future(handle.result()) for handle in handles]
        pending = set(futures)
        lost: list[JobNotFoundError] = []
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while pending:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise ResultTimeoutError(f"{len(pending)} job(s) have no result after {timeout:g}s")
                for future in done:
                    error = future.exception()
                    if isinstance(error, JobNotFoundError):
                        lost.append(error)
                    elif error is not None:
                        raise error
                    else:
                        yield future.result()
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: none is left to be reported as never retrieved
        if lost:
            raise _lost_error(lost)

    async def _look_for_workers(self) -> WorkerLook:
        """Whether a worker would run a job now (:func:`~llmqueue.ops.registry.look_for_workers`),
        looked up at most once per ``NO_WORKER_NOTICE`` seconds however many handles ask."""
        loop = asyncio.get_running_loop()
        if self._worker_check is None or loop.time() - self._worker_check[0] > NO_WORKER_NOTICE:
            settings = self.settings.worker
            self._worker_check = (loop.time(), asyncio.ensure_future(self._read_workers(settings)))
        try:
            return await asyncio.shield(self._worker_check[1])
        except REDIS_DOWN:
            return WorkerLook(None)  # a waiting handle reports Redis itself

    def _first_report(self, reason: str) -> bool:
        """Whether ``reason`` is new: each is said once, however many handles wait."""
        if reason == self._reported_no_worker:
            return False
        self._reported_no_worker = reason
        return True

    async def _read_workers(self, settings: WorkerConfig) -> WorkerLook:
        return await look_for_workers(
            self.redis, settings.queue_name, heartbeat_interval=settings.heartbeat_interval
        )

    def _prepare(self, job: JobLike, update: dict[str, Any]) -> Job:
        prepared = job.model_copy(update=update) if isinstance(job, Job) else Job.parse({**job, **update})
        self.check(prepared)
        return prepared

    def check(self, job: Job) -> None:
        """Raise JobValidationError if the workers would refuse ``job`` (a param not allowed, a model of
        another provider than their credentials'), when this producer's settings are theirs."""
        refused = submission_refusal(job, self.settings)
        if refused is not None:
            raise JobValidationError(f"invalid job: {refused}")


def _lost_error(lost: list[JobNotFoundError]) -> JobNotFoundError:
    """One error for every awaited job Redis no longer holds."""
    if len(lost) == 1:
        return lost[0]
    job_ids = [job_id for error in lost for job_id in error.job_ids]
    shown = ", ".join(job_ids[:5]) + (f" and {len(job_ids) - 5} more" if len(job_ids) > 5 else "")
    first = str(lost[0]).split(". ", 1)[-1]
    return JobNotFoundError(
        f"{len(job_ids)} awaited job(s) are not in Redis and will never have a result ({shown}). {first}",
        job_ids=job_ids,
    )


@dataclass(frozen=True)
class OutputRequest:
    """A job asked for JSON (``response_format``): its result's ``parsed`` is made of the answer, as an
    instance of ``model`` when a pydantic model class was given."""

    model: type[BaseModel] | None = None


def _with_schema_of_model(job: JobLike) -> tuple[JobLike, OutputRequest | None]:
    """``job`` with a pydantic model class given as ``params.response_format`` turned into its json_schema
    (as LiteLLM does), and what its result's ``parsed`` is to be; None for a job not asking for JSON."""
    params = job.params if isinstance(job, Job) else job.get("params")
    wanted = params.get("response_format") if isinstance(params, Mapping) else None
    if isinstance(wanted, type) and issubclass(wanted, BaseModel):
        converted = {**(params or {}), "response_format": response_format_of(wanted)}
        if isinstance(job, Job):
            return job.model_copy(update={"params": converted}), OutputRequest(wanted)
        return {**job, "params": converted}, OutputRequest(wanted)
    if isinstance(wanted, Mapping) and wanted.get("type") in ("json_schema", "json_object"):
        return job, OutputRequest()
    return job, None
