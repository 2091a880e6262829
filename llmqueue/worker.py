"""The arq worker: settings in, a running ``arq.Worker`` out.

Run it with ``llmqueue worker`` or ``arq llmqueue.worker.WorkerSettings``; the latter reads the
settings (``LLMQUEUE_CONFIG``, ``config.toml``, environment) when arq looks the class up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue import keys
from llmqueue.cache import ResponseCache, open_store
from llmqueue.coalesce import ScriptCoalescer
from llmqueue.connection import arq_redis_settings
from llmqueue.errors import RedisRefusedError
from llmqueue.limits.limiter import RateLimiter
from llmqueue.limits.routing import Deployments
from llmqueue.llm.call import warm_up
from llmqueue.ops.events import EventSink, log_event
from llmqueue.queue import payload
from llmqueue.queue.arq_run import run_claimed
from llmqueue.queue.heartbeat import Heartbeat
from llmqueue.queue.ready import LOW_PRIORITY_BELOW, Claimed, ReadyQueue
from llmqueue.queue.runner import JobRunner
from llmqueue.queue.store import JobStore
from llmqueue.redaction import redis_error_line
from llmqueue.settings import Settings, load_settings

logger = logging.getLogger("llmqueue.worker")

# arq counts every start of a job (limiter re-defers, crash restarts) against max_tries; llmqueue keeps
# its own count of failed provider calls, so arq's ceiling only has to stay out of the way.
ARQ_MAX_TRIES = 1_000_000
STOP_WITHOUT_REDIS_SECONDS = 1.0
"""How long a stopping worker gives Redis to answer, and then each step of stopping without it."""


async def perform_job(ctx: dict[str, Any], job: Any) -> None:
    """The one arq job function (registered as ``run_job``): hand the job to this worker's runner."""
    runner: JobRunner = ctx["llmqueue_runner"]
    await runner.handle(ctx["job_id"], job)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from a Redis URL (``redis://user:pass@host``, ``rediss://`` for TLS),
    query parameters included (``llmqueue.connection``: the translation every process uses).

    Commands retry with backoff through a short Redis outage (a restart), and start-up waits for Redis
    up to ``redis_connect_retries`` seconds.
    """
    connection = arq_redis_settings(settings.redis_url.get_secret_value())
    connection.conn_retries = settings.worker.redis_connect_retries
    connection.conn_retry_delay = 1
    connection.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    connection.retry = RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=12)
    return connection


class LLMQueueWorker(Worker):
    """arq's worker taking its jobs from llmqueue's ready queue, many per claim.

    Each job runs as arq's ``Worker.run_job`` runs it (timeouts, ``Retry``, cancellation on shutdown);
    only the choice and claim of jobs and their release differ:

    - ``_poll_iteration`` claims up to the free slots in one script call (``ReadyQueue.claim``:
      highest priority first, batches in turn) instead of arq's poll and per-job WATCH/MULTI claim;
      ``reserved_slots`` of them are kept for jobs above ``batch`` priority. The claim also reads
      what ``run_job`` opens with a transaction for (payload, try count, abort mark), so each job
      runs through ``arq_run.run_claimed``, arq's ``run_job`` without that round trip.
    - ``finish_job`` releases the claim in one script call that also puts a deferred or interrupted
      job back in its lane.
    - Between polls it blocks on the queue's wake-up list (BLPOP, at most ``poll_delay``) instead of
      sleeping, so a job a producer just queued starts within milliseconds; a failed poll (Redis
      restarting) is logged and retried instead of ending the worker.

    These override arq internals of the pinned arq version (``tests/test_arq_pin.py`` fails when
    arq's copies of them change).
    """

    reserved_slots: int = 0
    """Slots only jobs above ``batch`` priority may take, so an agent step never waits for a slot."""

    state_ttl: float = 7 * 86400.0
    """How long a started job's state is kept (``job_ttl``)."""

    _ready: ReadyQueue | None = None
    _low_running: int = 0
    _low_cap: int | None = None
    """How many ``batch`` jobs this worker holds at most now (None: all its unreserved slots)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._low_jobs: set[str] = set()

    async def main(self) -> None:
        # arq's Worker.main, with the poll loop below in place of ``async for _ in poll(...)``.
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        logger.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        self.ctx["redis"] = self.pool
        self._ready = ReadyQueue(
            self.pool, self.queue_name, claim_ttl=self.in_progress_timeout_s, state_ttl=self.state_ttl
        )
        if self.on_startup:
            await self.on_startup(self.ctx)
        runner: JobRunner | None = self.ctx.get("llmqueue_runner")
        if runner is not None:
            runner.release_on_finish = True
            runner.limiter.on_wake = self._ready.wake
        wake_key = keys.wake(self.queue_name)
        outage = RedisOutage(self.redis_settings)
        while True:
            try:
                await self._poll_iteration()
                outage.ended()
                if self.burst and await self._burst_done():
                    return
                if self.job_counter < self.max_jobs:
                    await self.pool.blpop([wake_key], timeout=self.poll_delay_s)
                else:
                    await asyncio.sleep(self.poll_delay_s)
            except (RedisError, OSError) as exc:
                await asyncio.sleep(outage.wait_after(exc))

    async def close(self) -> None:
        # arq's close writes to Redis (its health key); a worker stopping because Redis refuses it must
        # still end with the reason it stopped, not with that write's error. A Redis that does not
        # answer would hold each write for the pool's whole retry policy (about 17 s): a stopping
        # worker does not wait for it (its claims expire and their jobs go back to the queue).
        if self._pool is not None and not await self._redis_answers():
            logger.warning(
                "Redis does not answer: stopping without tidying up in it (jobs this worker held go "
                "back to the queue when their claim expires)"
            )
            if self.tasks:
                await asyncio.wait(list(self.tasks.values()), timeout=STOP_WITHOUT_REDIS_SECONDS)
            if self.on_shutdown:
                with contextlib.suppress(TimeoutError, RedisError, OSError):
                    await asyncio.wait_for(self.on_shutdown(self.ctx), STOP_WITHOUT_REDIS_SECONDS)
            await self._pool.close(close_connection_pool=True)
            self._pool = None
            return
        try:
            await super().close()
        except (RedisError, OSError) as exc:
            logger.warning("could not tidy up in Redis on the way out (%s)", redis_error_line(exc))

    async def _redis_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.pool.ping(), STOP_WITHOUT_REDIS_SECONDS)
        except (TimeoutError, RedisError, OSError):
            return False
        return True

    async def _poll_iteration(self) -> None:
        # arq's Worker._poll_iteration with one claim script in place of its poll and start_jobs.
        count = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            count = min(count, self.max_burst_jobs - self._jobs_started())
        if self.allow_pick_jobs and count > 0 and self._ready is not None:
            low_slots = self.max_jobs - self.reserved_slots
            low_limit = min(low_slots, self._low_cap or low_slots) - self._low_running
            runner: JobRunner | None = self.ctx.get("llmqueue_runner")
            for job in await self._ready.claim(count, low_priority_limit=low_limit):
                if runner is not None:
                    runner.starts[job.job_id] = job.start
                self._start(job, runner)
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # errors in run_job surface here, as in arq
        await self.heart_beat()

    def _start(self, job: Claimed, runner: JobRunner | None) -> None:
        # What arq's start_jobs does once its claim succeeded; the slot is free (count above).
        self.job_counter += 1
        low = job.priority < LOW_PRIORITY_BELOW
        if low:
            self._low_running += 1
            self._low_jobs.add(job.job_id)
        task = self.loop.create_task(run_claimed(self, job))

        def done(_: asyncio.Task[None]) -> None:
            if runner is not None:  # arq ended the run before calling the job (its payload expired)
                runner.starts.pop(job.job_id, None)
            self.job_counter -= 1
            if low:
                self._low_running -= 1
                self._low_jobs.discard(job.job_id)

        task.add_done_callback(done)
        self.tasks[job.job_id] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        if self._ready is None or keep_in_progress is not None:  # cron jobs: llmqueue has none
            await super().finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )
            return
        if job_id in self._low_jobs:
            self._adapt_low_cap(deferred=not finish and bool(incr_score))
        runner: JobRunner | None = self.ctx.get("llmqueue_runner")
        if finish and runner is not None and job_id in runner.released:
            runner.released.discard(job_id)  # the result's script ended the claim already
            return
        ttl = None if keep_result_forever or result_timeout_s is None else int(result_timeout_s * 1000)
        if finish:
            await self._ready.release(job_id, "finish", arq_result=result_data, arq_result_ttl_ms=ttl)
        elif incr_score:
            await self._ready.release(job_id, "defer", defer_ms=incr_score)
        else:
            await self._ready.release(job_id, "back")

    def _adapt_low_cap(self, *, deferred: bool) -> None:
        """Hold no more ``batch`` jobs than the limiter lets run (additive increase, cut on a deferral).

        A batch job the limiter sends back was claimed for nothing; with every slot full of them a
        saturated key would have each worker claim, refuse and put back hundreds of jobs a second. So
        a deferral caps the worker's batch jobs at those it runs now, and each one that ends raises the
        cap by one, up to all unreserved slots.
        """
        low_slots = self.max_jobs - self.reserved_slots
        if deferred:
            self._low_cap = max(1, self._low_running - 1)
        elif self._low_cap is not None:
            self._low_cap = None if self._low_cap + 1 >= low_slots else self._low_cap + 1

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False


class RedisOutage:
    """How the poll loop meets Redis errors: it waits through what can heal and stops on what cannot.

    - A lost connection or a Redis restarting: polled again after 1 s, doubling to 30 s.
    - Redis refusing writes (out of memory under ``noeviction``, a read-only replica): the claim script
      is refused before it takes a job, so the worker takes none (it would pay for answers it could not
      store) and asks again with the same backoff, said once until Redis accepts writes again.
    - Refused credentials or permissions (a changed password, an ACL): waiting cannot heal them; the
      worker stops with :class:`RedisRefusedError` after its running jobs end.
    """

    first_delay = 1.0
    max_delay = 30.0

    def __init__(self, connection: RedisSettings | None) -> None:
        self._where = (
            "" if connection is None else f"{connection.host}:{connection.port}/{connection.database}"
        )
        self._said: str | None = None
        self._delay = self.first_delay

    def wait_after(self, exc: BaseException) -> float:
        """Seconds to wait before the next poll; raises RedisRefusedError for what cannot heal."""
        line = redis_error_line(exc)
        if isinstance(exc, AuthenticationError | NoPermissionError):
            raise RedisRefusedError(
                f"Redis at {self._where} refused this worker ({line}): check the user, password and ACL "
                "in the Redis URL; the worker stopped"
            ) from None
        kind = type(exc).__name__  # one line per kind: Redis words one refusal differently in a script
        if kind != self._said:
            if isinstance(exc, OutOfMemoryError | ReadOnlyError):
                logger.error(
                    "Redis at %s refuses writes (%s): taking no job until it accepts them", self._where, line
                )
            else:
                logger.warning("Redis at %s unavailable (%s); polling again", self._where, line)
            self._said = kind
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay)
        return delay

    def ended(self) -> None:
        """A poll went through: the next error starts a new outage."""
        if self._said is not None:
            logger.warning("Redis at %s answers again; taking jobs", self._where)
            self._said = None
        self._delay = self.first_delay


def worker_options(settings: Settings, sinks: Sequence[EventSink] = (log_event,)) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` (also the attributes of :data:`WorkerSettings`)."""
    worker = settings.worker
    worker_id = new_worker_id()
    # os.environ/NAME values of the model_list are read here, once, from the worker's environment.
    deployments = Deployments(settings, os.environ) if settings.model_list else None

    async def on_startup(ctx: dict[str, Any]) -> None:
        coalescer = ScriptCoalescer(ctx["redis"])  # the limiter's and the results' calls share round trips
        ctx["llmqueue_coalescer"] = coalescer
        store = JobStore(
            ctx["redis"],
            queue_name=worker.queue_name,
            job_ttl=worker.job_ttl,
            result_ttl=worker.result_ttl,
            coalescer=coalescer,
        )
        cache = None
        if settings.cache.enabled:
            cache = ResponseCache(
                open_store(settings.cache, ctx["redis"]),
                ctx["redis"],
                claim_seconds=_longest_llm_timeout(settings) + 30,
            )
            ctx["llmqueue_cache"] = cache
        runner = JobRunner(
            settings=settings,
            store=store,
            limiter=RateLimiter(ctx["redis"], coalescer),
            worker_id=worker_id,
            sinks=list(sinks),
            cache=cache,
            deployments=deployments,
        )
        ctx["llmqueue_runner"] = runner
        heartbeat = Heartbeat(
            ctx["redis"],
            worker_id=worker_id,
            queue_name=worker.queue_name,
            in_flight=lambda: runner.in_flight,
            interval=worker.heartbeat_interval,
            ttl=worker.in_progress_ttl,
        )
        await heartbeat.beat()
        heartbeat.start()
        ctx["llmqueue_heartbeat"] = heartbeat
        if worker.warm_up:
            try:
                await warm_up()
            except Exception as exc:  # a slower first call is all this costs
                logger.warning("LiteLLM warm-up failed: %s", exc)
        # LiteLLM's import leaves millions of long-lived objects; frozen, the collector skips them, in
        # every collection while jobs run and in the final one at exit (seconds on a busy machine).
        gc.freeze()
        logger.info("llmqueue worker %s started on queue %s", worker_id, worker.queue_name)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        runner: JobRunner | None = ctx.get("llmqueue_runner")
        if runner is not None:
            await runner.settle(timeout=5)
        heartbeat: Heartbeat | None = ctx.get("llmqueue_heartbeat")
        if heartbeat is not None:
            await heartbeat.stop()
        cache: ResponseCache | None = ctx.get("llmqueue_cache")
        if cache is not None:
            await cache.close()
        coalescer: ScriptCoalescer | None = ctx.get("llmqueue_coalescer")
        if coalescer is not None:
            await coalescer.close()
        logger.info("llmqueue worker %s stopped", worker_id)

    return {
        "functions": [func(perform_job, name=payload.JOB_FUNCTION, max_tries=ARQ_MAX_TRIES)],
        "queue_name": worker.queue_name,
        "redis_settings": redis_settings(settings),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        # SIGTERM/SIGINT: take no new job, let running calls finish for this long, then put the rest back.
        "job_completion_wait": int(worker.shutdown_grace),
        "max_jobs": worker.max_jobs,
        "job_timeout": worker.job_timeout(_longest_llm_timeout(settings)),
        "keep_result": 0,
        "poll_delay": worker.poll_delay,
        "max_tries": ARQ_MAX_TRIES,
        "health_check_interval": worker.health_check_interval,
        "job_serializer": payload.serialize,
        "job_deserializer": payload.deserialize_job,
        "expires_extra_ms": int(worker.job_ttl * 1000),
    }


def create_worker(
    settings: Settings, *, sinks: Sequence[EventSink] = (log_event,), **overrides: Any
) -> LLMQueueWorker:
    """A worker for these settings; ``overrides`` go to ``arq.Worker`` (e.g. ``burst=True``)."""
    worker = LLMQueueWorker(**{**worker_options(settings, sinks), **overrides})
    # arq claims a job it picks up for job_timeout + 10 s; were that left to the heartbeat to shorten,
    # a worker dying before its next beat would leave its newest jobs claimed for minutes.
    worker.in_progress_timeout_s = settings.worker.in_progress_ttl
    worker.reserved_slots = settings.worker.slots_reserved()
    worker.state_ttl = settings.worker.job_ttl
    return worker


def _longest_llm_timeout(settings: Settings) -> float:
    timeouts = [settings.llm.timeout, *(settings.llm_for(name).timeout for name in settings.llm_groups)]
    for deployment in settings.model_list:
        timeout = deployment.extra_params.get("timeout")
        if isinstance(timeout, int | float):
            timeouts.append(float(timeout))
    return max(timeouts)


def __getattr__(name: str) -> Any:
    # ``arq llmqueue.worker.WorkerSettings``: the settings are read when arq asks for the class.
    if name == "WorkerSettings":
        config = os.environ.get("LLMQUEUE_CONFIG")
        litellm_config = os.environ.get("LLMQUEUE_LITELLM_CONFIG")
        settings = load_settings(
            Path(config) if config else None, litellm_config=Path(litellm_config) if litellm_config else None
        )
        options = worker_options(settings)
        return type("WorkerSettings", (), options)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
