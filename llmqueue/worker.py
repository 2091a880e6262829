"""The arq worker: settings in, a running ``arq.Worker`` out.

Run it with ``llmqueue worker`` or ``arq llmqueue.worker.WorkerSettings``; the latter reads the
settings (``LLMQUEUE_CONFIG``, ``config.toml``, environment) when arq looks the class up.
"""

from __future__ import annotations

import asyncio
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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue import keys
from llmqueue.limits.limiter import RateLimiter
from llmqueue.llm.call import warm_up
from llmqueue.ops.events import EventSink, log_event
from llmqueue.queue import payload
from llmqueue.queue.heartbeat import Heartbeat
from llmqueue.queue.runner import JobRunner
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings, load_settings

logger = logging.getLogger("llmqueue.worker")

# arq counts every start of a job (limiter re-defers, crash restarts) against max_tries; llmqueue keeps
# its own count of failed provider calls, so arq's ceiling only has to stay out of the way.
ARQ_MAX_TRIES = 1_000_000


async def perform_job(ctx: dict[str, Any], job: Any) -> None:
    """The one arq job function (registered as ``run_job``): hand the job to this worker's runner."""
    runner: JobRunner = ctx["llmqueue_runner"]
    await runner.handle(ctx["job_id"], job)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from a Redis URL (``redis://user:pass@host``, ``rediss://`` for TLS).

    Commands retry with backoff through a short Redis outage (a restart), and start-up waits for Redis
    up to ``redis_connect_retries`` seconds.
    """
    connection = RedisSettings.from_dsn(settings.redis_url.get_secret_value())
    connection.conn_retries = settings.worker.redis_connect_retries
    connection.conn_retry_delay = 1
    connection.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    connection.retry = RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=12)
    return connection


class LLMQueueWorker(Worker):
    """arq's worker with two changes to its main loop, and a claim that survives Redis errors.

    - Between polls it blocks on the queue's wake-up list (BLPOP, at most ``poll_delay``) instead of
      sleeping, so a job a producer just queued starts within milliseconds, not a poll interval.
    - A failed poll (Redis restarting) is logged and retried instead of ending the worker.
    - A claim that fails half-way gives its job slot back (arq's would be lost for good).
    """

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
        if self.on_startup:
            await self.on_startup(self.ctx)
        wake_key = keys.wake(self.queue_name)
        while True:
            try:
                await self._poll_iteration()
                if self.burst and await self._burst_done():
                    return
                await self.pool.blpop([wake_key], timeout=self.poll_delay_s)
            except (RedisError, OSError) as exc:
                # redis-py turns a connection lost inside a WATCH into WatchError, so any RedisError can
                # mean "Redis is restarting"; retrying beats ending the worker.
                logger.warning("Redis unavailable (%s); polling again in 1s", exc)
                await asyncio.sleep(1)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # arq takes a job slot before claiming a job and gives it back only on the paths it expects;
        # a Redis error in between would leave the slot taken forever, one fewer on every outage.
        for job_id in job_ids:
            earlier_task = self.tasks.get(job_id.decode())
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                if self.tasks.get(job_id.decode()) is earlier_task:  # no task started: the slot is ours
                    self.job_counter -= 1
                    self.sem.release()
                raise

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False


def worker_options(settings: Settings, sinks: Sequence[EventSink] = (log_event,)) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` (also the attributes of :data:`WorkerSettings`)."""
    worker = settings.worker
    worker_id = new_worker_id()

    async def on_startup(ctx: dict[str, Any]) -> None:
        store = JobStore(
            ctx["redis"], queue_name=worker.queue_name, job_ttl=worker.job_ttl, result_ttl=worker.result_ttl
        )
        runner = JobRunner(
            settings=settings,
            store=store,
            limiter=RateLimiter(ctx["redis"]),
            worker_id=worker_id,
            sinks=list(sinks),
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
        heartbeat: Heartbeat | None = ctx.get("llmqueue_heartbeat")
        if heartbeat is not None:
            await heartbeat.stop()
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
    return worker


def _longest_llm_timeout(settings: Settings) -> float:
    return max([settings.llm.timeout, *(settings.llm_for(name).timeout for name in settings.llm_groups)])


def __getattr__(name: str) -> Any:
    # ``arq llmqueue.worker.WorkerSettings``: the settings are read when arq asks for the class.
    if name == "WorkerSettings":
        config = os.environ.get("LLMQUEUE_CONFIG")
        options = worker_options(load_settings(Path(config) if config else None))
        return type("WorkerSettings", (), options)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
