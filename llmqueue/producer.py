"""The producer: submit jobs, await their results.

Waiting costs no polling: jobs a producer submits name its inbox (a Redis list); one listener task
blocks on it (BLPOP) and wakes the waiting handles, so an awaited call pays milliseconds, not a poll
interval. A handle for a job submitted elsewhere blocks on that job's own ``done`` list instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue import keys
from llmqueue.errors import (
    JobNotFoundError,
    JobValidationError,
    RedisUnavailableError,
    ResultTimeoutError,
)
from llmqueue.llm.policy import submission_refusal
from llmqueue.llm.structured import parse_answer, response_format_of
from llmqueue.models import Job, JobResult, parse_priority
from llmqueue.ops.registry import no_worker_reason
from llmqueue.queue.job_stream import StreamEvent, read_stream
from llmqueue.queue.store import JobStore
from llmqueue.redaction import redact_url
from llmqueue.settings import Settings, WorkerConfig, load_settings

JobLike = Job | Mapping[str, Any]
_LISTEN_BLOCK_SECONDS = 1
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
NO_WORKER_NOTICE = 3.0
"""Seconds a result is awaited before the producer checks that some worker is running."""
GONE_CHECK = 5.0
"""Seconds between checks that an awaited job is still in Redis (queued, running or finished)."""
_RECONNECT_DELAY = 1.0  # seconds between attempts while Redis is unreachable
logger = logging.getLogger("llmqueue.producer")


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
        JobNotFoundError when Redis no longer holds the job nor its result (it will never have one).
        """
        notice = asyncio.ensure_future(self._notice_no_worker())
        try:
            result = await asyncio.wait_for(self._wait_unless_gone(), timeout)
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
        redis = self.producer.redis
        async for event in read_stream(redis, self.job_id, after=after, finished=self._finished):
            yield event

    async def _finished(self) -> bool:
        return await self.producer.store.get_result(self.job_id) is not None

    async def _wait_unless_gone(self) -> JobResult:
        waiting = asyncio.ensure_future(self._wait())
        gone = self.producer._watch_gone(self.job_id)
        try:
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
            return gone.result()  # raises JobNotFoundError, or the result found on the last look
        finally:
            waiting.cancel()
            self.producer._unwatch_gone(self.job_id, gone)

    async def _notice_no_worker(self) -> None:
        """Log a warning if, after ``NO_WORKER_NOTICE`` seconds, no worker is running to do the job."""
        await asyncio.sleep(NO_WORKER_NOTICE)
        reason = await self.producer._no_worker_reason()
        if reason is not None:
            logger.warning("job %s is waiting: %s", self.job_id, reason)

    async def _wait(self) -> JobResult:
        if self._via_inbox:
            return await self.producer._await_inbox(self.job_id)
        store = self.producer.store
        while True:
            try:
                result = await store.get_result(self.job_id)
                if result is not None:
                    return result
                token = await store.redis.blpop([keys.done(self.job_id)], timeout=_LISTEN_BLOCK_SECONDS)
                if token is not None:
                    # Put the token back for any other waiter on the same job.
                    await store.redis.rpush(keys.done(self.job_id), b"1")
            except _REDIS_DOWN as exc:
                logger.warning("Redis unavailable while awaiting job %s (%s); retrying", self.job_id, exc)
                await asyncio.sleep(_RECONNECT_DELAY)


class Producer:
    """Submits jobs to the queue and awaits their results. Use as ``async with Producer(...) as p:``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        url = redis_url or self.settings.redis_url.get_secret_value()
        self._owns_redis = redis is None
        self.redis: Redis = redis if redis is not None else Redis.from_url(url)
        self._url_for_errors = redact_url(url)
        worker = self.settings.worker
        self.store = JobStore(
            self.redis, queue_name=worker.queue_name, job_ttl=worker.job_ttl, result_ttl=worker.result_ttl
        )
        self.inbox = keys.inbox(uuid.uuid4().hex)
        self._waiters: dict[str, asyncio.Future[JobResult]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._worker_check: tuple[float, asyncio.Future[str | None]] | None = None
        self._reported_no_worker: str | None = None
        self._gone_watch: dict[str, list[asyncio.Future[JobResult]]] = {}
        self._gone_checker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Producer:
        try:
            await self.redis.ping()
        except (RedisConnectionError, OSError) as exc:
            raise RedisUnavailableError(f"cannot reach Redis at {self._url_for_errors}: {exc}") from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._worker_check is not None:
            self._worker_check[1].cancel()
        if self._gone_checker is not None:
            self._gone_checker.cancel()
            await asyncio.gather(self._gone_checker, return_exceptions=True)
            self._gone_checker = None
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()
        if self._owns_redis:
            await self.redis.aclose()

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
        """Queue many jobs in pipelined round trips (thousands per round trip); ``priority`` as in submit."""
        update: dict[str, Any] = {"reply_to": self.inbox}
        if priority is not None:
            try:
                update["priority"] = parse_priority(priority)
            except ValueError as exc:
                raise JobValidationError(str(exc)) from None
        outputs: list[OutputRequest | None] = []
        prepared: list[Job] = []
        for job in jobs:
            job, output = _with_schema_of_model(job)
            prepared.append(self._prepare(job, update))
            outputs.append(output)
        added = await self.store.enqueue(prepared)
        return [
            JobHandle(self, job.id, via_inbox=new, output=output)
            for job, new, output in zip(prepared, added, outputs, strict=True)
        ]

    def handle(self, job_id: str) -> JobHandle:
        """A handle for a job submitted earlier, by this or any other producer."""
        return JobHandle(self, job_id, via_inbox=False)

    async def as_completed(
        self, handles: Sequence[JobHandle], timeout: float | None = None
    ) -> AsyncIterator[JobResult]:
        """Yield results as the jobs finish, in finishing order."""
        pending = {asyncio.ensure_future(handle.result()) for handle in handles}
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
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()

    def _watch_gone(self, job_id: str) -> asyncio.Future[JobResult]:
        """A future that fails with JobNotFoundError once Redis holds neither the job nor its result.

        One task checks every awaited job each ``GONE_CHECK`` seconds, in one round trip for all of
        them, however many handles wait.
        """
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._gone_watch.setdefault(job_id, []).append(future)
        if self._gone_checker is None or self._gone_checker.done():
            self._gone_checker = asyncio.create_task(self._check_gone_forever())
        return future

    def _unwatch_gone(self, job_id: str, future: asyncio.Future[JobResult]) -> None:
        future.cancel()
        watching = self._gone_watch.get(job_id, [])
        if future in watching:
            watching.remove(future)
        if not watching:
            self._gone_watch.pop(job_id, None)

    async def _check_gone_forever(self) -> None:
        while self._gone_watch:
            await asyncio.sleep(GONE_CHECK)
            with contextlib.suppress(*_REDIS_DOWN):  # the waiting side reports Redis itself
                await self._check_gone()

    async def _check_gone(self) -> None:
        job_ids = list(self._gone_watch)
        present = await self.store.exists_many(job_ids)
        missing = [job_id for job_id, here in zip(job_ids, present, strict=True) if not here]
        # A result may have been stored and its job released between two reads: a last look.
        results = await self.store.get_results(missing)
        ttl = self.settings.worker
        for job_id, result in zip(missing, results, strict=True):
            self._waiters.pop(job_id, None)  # nothing will arrive in the inbox for it
            for future in self._gone_watch.pop(job_id, []):
                if future.done():
                    continue
                if result is not None:
                    future.set_result(result)
                    continue
                future.set_exception(
                    JobNotFoundError(
                        f"job {job_id} is not in Redis: neither queued, running nor finished (an unknown "
                        f"id, a job no worker took within job_ttl={ttl.job_ttl:g}s, or a result kept past "
                        f"result_ttl={ttl.result_ttl:g}s)"
                    )
                )

    async def _no_worker_reason(self) -> str | None:
        """Why no job would run now (no live worker), looked up at most once per ``NO_WORKER_NOTICE``
        seconds however many handles ask, and said once: None after the first report."""
        loop = asyncio.get_running_loop()
        if self._worker_check is None or loop.time() - self._worker_check[0] > NO_WORKER_NOTICE:
            settings = self.settings.worker
            self._worker_check = (loop.time(), asyncio.ensure_future(self._read_no_worker(settings)))
        try:
            reason = await asyncio.shield(self._worker_check[1])
        except _REDIS_DOWN:
            return None  # a waiting handle reports Redis itself
        if reason is None or reason == self._reported_no_worker:
            return None
        self._reported_no_worker = reason
        return reason

    async def _read_no_worker(self, settings: WorkerConfig) -> str | None:
        return await no_worker_reason(
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

    async def _await_inbox(self, job_id: str) -> JobResult:
        future = self._waiters.get(job_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[job_id] = future
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        # The result may have been stored before we started waiting: its inbox entry is then
        # already consumed or still queued; checking the result key covers both.
        existing = await self.store.get_result(job_id)
        if existing is not None:
            self._waiters.pop(job_id, None)
            return existing
        return await asyncio.shield(future)

    async def _listen(self) -> None:
        # A Redis outage (a restart) must not end the listener: every waiter would then hang.
        after_outage = False
        while self._waiters:
            try:
                if after_outage:
                    await self._wake_finished()  # inbox entries popped as the connection broke are lost
                    after_outage = False
                await self._take_from_inbox()
            except _REDIS_DOWN as exc:
                logger.warning("Redis unavailable while awaiting results (%s); retrying", exc)
                after_outage = True
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _take_from_inbox(self) -> None:
        item = await self.redis.blpop([self.inbox], timeout=_LISTEN_BLOCK_SECONDS)
        if item is None:
            return
        job_id = item[1].decode()
        future = self._waiters.get(job_id)
        if future is None or future.done():
            return
        result = await self.store.get_result(job_id)
        if result is not None:
            self._waiters.pop(job_id, None)
            future.set_result(result)

    async def _wake_finished(self) -> None:
        job_ids = list(self._waiters)
        for job_id, result in zip(job_ids, await self.store.get_results(job_ids), strict=True):
            future = self._waiters.get(job_id)
            if result is not None and future is not None and not future.done():
                self._waiters.pop(job_id, None)
                future.set_result(result)


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
