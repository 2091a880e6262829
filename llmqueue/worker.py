"""The worker: settings in, a process taking jobs from Redis and calling the provider out.

``llmqueue worker`` runs :class:`Worker`: arq's Redis connection (``RedisSettings``, ``create_pool``)
and queue, llmqueue's own loop (``llmqueue.queue.worker_loop``: priorities, batches in turn, many
jobs per claim, reserved slots), the runner, its heartbeat. SIGTERM or SIGINT stops it gracefully:
no new job, running calls get ``shutdown_grace`` seconds, the rest go back to the queue (a second
signal cuts the grace short).

``arq llmqueue.worker.WorkerSettings`` still works, for deployments built around arq's CLI: it runs
arq's own worker with llmqueue's job function (arq's public ``functions``/``on_startup`` hooks), so
jobs run, retry and defer exactly as here, but in arq's order (by due time): no priorities, no batch
fairness, no reserved slots, one claim per job. The settings (``LLMQUEUE_CONFIG``, ``config.toml``,
environment) are read when arq looks the class up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue.batches.block_feeder import BlockFeeder
from llmqueue.batches.control import Batches
from llmqueue.cache import ResponseCache, open_store
from llmqueue.coalesce import ScriptCoalescer
from llmqueue.connection import (
    arq_redis_settings,
    is_sentinel_url,
    parse_sentinel_url,
    sentinel_client,
    where,
)
from llmqueue.limits.limiter import RateLimiter
from llmqueue.limits.routing import Deployments
from llmqueue.llm.call import warm_up
from llmqueue.ops.counters import JobCounter
from llmqueue.ops.events import EventSink, log_event
from llmqueue.queue import payload
from llmqueue.queue.heartbeat import Heartbeat
from llmqueue.queue.replication import replica_wait
from llmqueue.queue.runner import JobRunner
from llmqueue.queue.store import JobStore
from llmqueue.queue.worker_loop import WorkerLoop
from llmqueue.redaction import redis_error_line
from llmqueue.settings import Settings, load_settings

__all__ = ["Worker", "create_worker", "redis_settings"]

logger = logging.getLogger("llmqueue.worker")

# arq's own worker counts every start of a job (limiter re-defers, crash restarts) against max_tries;
# llmqueue keeps its own count of failed provider calls, so arq's ceiling only has to stay out of the way.
ARQ_MAX_TRIES = 1_000_000
StartGate = Callable[[asyncio.Event], Awaitable[bool]]
"""What holds a worker before its first job: True lets it take jobs, False stops it (see :class:`Worker`)."""
STOP_WITHOUT_REDIS_SECONDS = 1.0
"""How long a stopping worker gives Redis to answer, and then each step of stopping without it."""


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


async def connect(settings: Settings) -> ArqRedis:
    """arq's pool for these settings, with llmqueue's JSON job format (never pickle)."""
    worker = settings.worker
    url = settings.redis_url.get_secret_value()
    if is_sentinel_url(url):
        return await _connect_through_sentinels(settings, url)
    return await create_pool(
        redis_settings(settings),
        job_serializer=payload.serialize,
        job_deserializer=payload.deserialize_job,
        default_queue_name=worker.queue_name,
        expires_extra_ms=int(worker.job_ttl * 1000),
    )


async def _connect_through_sentinels(settings: Settings, url: str) -> ArqRedis:
    """An ``ArqRedis`` of the master the sentinels name, built as producers build theirs (arq's own
    Sentinel support passes the sentinels neither passwords nor certificates), with the commands'
    retries of :func:`redis_settings`; start-up waits for the master as ``create_pool`` does."""
    worker = settings.worker
    redis = sentinel_client(
        parse_sentinel_url(url),
        redis_class=ArqRedis,
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        retry=RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=12),
        encoding="utf8",
    )
    redis.job_serializer = payload.serialize
    redis.job_deserializer = payload.deserialize_job
    redis.default_queue_name = worker.queue_name
    redis.expires_extra_ms = int(worker.job_ttl * 1000)
    retries = worker.redis_connect_retries
    while True:
        try:
            await redis.ping()
            return redis
        except (RedisError, OSError) as exc:
            if retries == 0:
                await redis.aclose()
                raise
            retries -= 1
            logger.warning("Redis through the sentinels not reachable (%s); retrying", redis_error_line(exc))
            await asyncio.sleep(1)


@dataclass
class Services:
    """What runs beside the jobs of one worker: the runner and what it uses, the heartbeat, and the
    feeder of submitted batches' blocks of lines."""

    runner: JobRunner
    heartbeat: Heartbeat
    coalescer: ScriptCoalescer
    cache: ResponseCache | None
    block_feeder: BlockFeeder

    @classmethod
    async def start(
        cls, redis: ArqRedis, settings: Settings, worker_id: str, sinks: Sequence[EventSink]
    ) -> Services:
        worker = settings.worker
        # os.environ/NAME values of the model_list are read here, once, from the worker's environment.
        deployments = Deployments(settings, os.environ) if settings.model_list else None
        coalescer = ScriptCoalescer(redis)  # the limiter's and the results' calls share round trips
        store = JobStore(
            redis,
            queue_name=worker.queue_name,
            job_ttl=worker.job_ttl,
            result_ttl=worker.result_ttl,
            coalescer=coalescer,
            replicas=replica_wait(redis, settings, settings.redis_url.get_secret_value()),
        )
        cache = None
        if settings.cache.enabled:
            cache = ResponseCache(
                open_store(settings.cache, redis), redis, claim_seconds=longest_llm_timeout(settings) + 30
            )
        runner = JobRunner(
            settings=settings,
            store=store,
            limiter=RateLimiter(redis, coalescer),
            worker_id=worker_id,
            sinks=list(sinks),
            cache=cache,
            deployments=deployments,
        )
        counters = [s for s in sinks if isinstance(s, JobCounter)]
        heartbeat = Heartbeat(
            redis,
            worker_id=worker_id,
            queue_name=worker.queue_name,
            in_flight=lambda: runner.in_flight,
            interval=worker.heartbeat_interval,
            ttl=worker.in_progress_ttl,
            counts=counters[0].counts.as_fields if counters else dict,
        )
        await heartbeat.beat()
        heartbeat.start()
        block_feeder = BlockFeeder(Batches(store, settings), owner=worker_id)
        block_feeder.start()
        if worker.warm_up:
            try:
                await warm_up()
            except Exception as exc:  # a slower first call is all this costs
                logger.warning("LiteLLM warm-up failed: %s", exc)
        # LiteLLM's import leaves millions of long-lived objects; frozen, the collector skips them, in
        # every collection while jobs run and in the final one at exit (seconds on a busy machine).
        gc.freeze()
        logger.info("llmqueue worker %s started on queue %s", worker_id, worker.queue_name)
        return cls(
            runner=runner, heartbeat=heartbeat, coalescer=coalescer, cache=cache, block_feeder=block_feeder
        )

    async def stop(self) -> None:
        await self.block_feeder.stop()
        await self.runner.settle(timeout=5)
        await self.heartbeat.stop()
        if self.cache is not None:
            await self.cache.close()
        await self.coalescer.close()
        logger.info("llmqueue worker %s stopped", self.runner.worker_id)


class Worker:
    """One worker process's job taking: connect, start the services, run the loop, tidy up.

    ``burst``: end once the queue is empty (``llmqueue run``'s workers). ``handle_signals``: stop
    gracefully on SIGTERM/SIGINT (off when the worker runs inside another program's event loop).
    ``sinks`` receive every job event; the worker adds its own :class:`JobCounter`. ``start_gate``,
    awaited with an event set when the worker is told to stop, holds it between its start-up and its
    first job; False stops it having taken none (``llmqueue.ops.start_gate``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sinks: Sequence[EventSink] = (log_event,),
        burst: bool = False,
        handle_signals: bool = True,
        start_gate: StartGate | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = new_worker_id()
        self.counter = JobCounter()
        self.sinks: list[EventSink] = [*sinks, self.counter]
        self.burst = burst
        self.handle_signals = handle_signals
        self.job_loop: WorkerLoop | None = None
        """The loop, once started up (None before)."""
        self.start_gate = start_gate
        self._stopped_early = False
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        """Run until stopped by a signal (or, in burst mode, until the queue is empty)."""
        asyncio.run(self.main())

    def stop(self, grace: float | None = None) -> None:
        """Stop as SIGTERM does (``grace``: seconds running jobs may end in, default ``shutdown_grace``)."""
        if self.job_loop is not None:
            self.job_loop.stop(grace)
        else:  # still starting up: the loop ends as soon as it starts
            self._stopped_early = True
            if self._stopping is not None:
                self._stopping.set()

    async def main(self) -> None:
        """Connect, start up, take jobs until stopped, and tidy up (also when cancelled)."""
        self._stopping = asyncio.Event()
        redis = await connect(self.settings)
        try:
            with self._signals_stop():
                await self._serve(redis)
        finally:
            await redis.close(close_connection_pool=True)

    async def _serve(self, redis: ArqRedis) -> None:
        worker = self.settings.worker
        services = await Services.start(redis, self.settings, self.worker_id, self.sinks)
        try:
            if not await self._through_gate():
                return
            self.job_loop = WorkerLoop(
                redis,
                worker,
                services.runner,
                job_timeout=worker.job_timeout(longest_llm_timeout(self.settings)),
                burst=self.burst,
                more_to_come=services.block_feeder.pending,
                counts=self.counter.counts,
                where=where(self.settings.redis_url.get_secret_value()),
            )
            if self._stopped_early:
                self.job_loop.stop()
            await self.job_loop.run()
        finally:
            await self._tidy(redis, services)

    async def _through_gate(self) -> bool:
        """False when the start gate closed instead of opening (or the worker was stopped at it)."""
        if self.start_gate is None:
            return True
        assert self._stopping is not None
        logger.info("llmqueue worker %s waits for its run to let it take jobs", self.worker_id)
        if self._stopped_early or not await self.start_gate(self._stopping):
            logger.info("llmqueue worker %s stops: its run ended before letting it take jobs", self.worker_id)
            return False
        logger.info("llmqueue worker %s takes jobs", self.worker_id)
        return True

    @contextlib.contextmanager
    def _signals_stop(self) -> Iterator[None]:
        if not self.handle_signals:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        running = len(self.job_loop.tasks) if self.job_loop is not None else 0
        logger.info(
            "shutdown on %s: taking no new job; %d running may end within %gs (a second signal ends them)",
            sig.name,
            running,
            self.settings.worker.shutdown_grace,
        )
        self.stop()

    async def _tidy(self, redis: ArqRedis, services: Services) -> None:
        # A worker stopping because Redis refuses it must still end with the reason it stopped, not
        # with the error of a write on the way out. A Redis that does not answer would hold each write
        # for the pool's whole retry policy (about 17 s): then the worker does not wait for it (its
        # claims expire and their jobs go back to the queue).
        if not await _answers(redis):
            logger.warning(
                "Redis does not answer: stopping without tidying up in it (jobs this worker held go "
                "back to the queue when their claim expires)"
            )
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await asyncio.wait_for(services.stop(), STOP_WITHOUT_REDIS_SECONDS)
            return
        try:
            if self.job_loop is not None:
                await redis.delete(self.job_loop.health_key)
            await services.stop()
        except (RedisError, OSError) as exc:
            logger.warning("could not tidy up in Redis on the way out (%s)", redis_error_line(exc))


async def _answers(redis: ArqRedis) -> bool:
    try:
        await asyncio.wait_for(redis.ping(), STOP_WITHOUT_REDIS_SECONDS)
    except (TimeoutError, RedisError, OSError):
        return False
    return True


def create_worker(
    settings: Settings,
    *,
    sinks: Sequence[EventSink] = (log_event,),
    burst: bool = False,
    handle_signals: bool = True,
    start_gate: StartGate | None = None,
) -> Worker:
    """A worker for these settings (see :class:`Worker`)."""
    return Worker(settings, sinks=sinks, burst=burst, handle_signals=handle_signals, start_gate=start_gate)


def longest_llm_timeout(settings: Settings) -> float:
    timeouts = [settings.llm.timeout, *(settings.llm_for(name).timeout for name in settings.llm_groups)]
    for deployment in settings.model_list:
        timeout = deployment.extra_params.get("timeout")
        if isinstance(timeout, int | float):
            timeouts.append(float(timeout))
    return max(timeouts)


async def perform_job(ctx: dict[str, Any], job: Any) -> None:
    """arq's job function (registered as ``run_job``) for arq's own worker: hand the job to the runner."""
    services: Services = ctx["llmqueue"]
    await services.runner.handle(ctx["job_id"], job)


def arq_worker_settings(settings: Settings, sinks: Sequence[EventSink] = (log_event,)) -> dict[str, Any]:
    """Keyword arguments of ``arq.worker.Worker`` running llmqueue's jobs with arq's own loop."""
    worker = settings.worker
    worker_id = new_worker_id()
    counter = JobCounter()

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["llmqueue"] = await Services.start(ctx["redis"], settings, worker_id, [*sinks, counter])

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        services: Services | None = ctx.get("llmqueue")
        if services is not None:
            await services.stop()

    return {
        "functions": [func(perform_job, name=payload.JOB_FUNCTION, max_tries=ARQ_MAX_TRIES)],
        "queue_name": worker.queue_name,
        "redis_settings": redis_settings(settings),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_completion_wait": int(worker.shutdown_grace),
        "max_jobs": worker.max_jobs,
        "job_timeout": worker.job_timeout(longest_llm_timeout(settings)),
        "keep_result": 0,
        "poll_delay": worker.poll_delay,
        "max_tries": ARQ_MAX_TRIES,
        "health_check_interval": worker.health_check_interval,
        "job_serializer": payload.serialize,
        "job_deserializer": payload.deserialize_job,
        "expires_extra_ms": int(worker.job_ttl * 1000),
    }


def __getattr__(name: str) -> Any:
    # ``arq llmqueue.worker.WorkerSettings``: the settings are read when arq asks for the class.
    if name == "WorkerSettings":
        config = os.environ.get("LLMQUEUE_CONFIG")
        litellm_config = os.environ.get("LLMQUEUE_LITELLM_CONFIG")
        settings = load_settings(
            Path(config) if config else None, litellm_config=Path(litellm_config) if litellm_config else None
        )
        return type("WorkerSettings", (), arq_worker_settings(settings))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
