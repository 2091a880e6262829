"""The arq worker: settings in, a running ``arq.Worker`` out.

Run it with ``llmqueue worker`` or ``arq llmqueue.worker.WorkerSettings``; the latter reads the
settings (``LLMQUEUE_CONFIG``, ``config.toml``, environment) when arq looks the class up.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

from llmqueue import serialization
from llmqueue.jobstore import JobStore
from llmqueue.limiter import RateLimiter
from llmqueue.llm_call import warm_up
from llmqueue.runner import JobRunner
from llmqueue.settings import Settings, load_settings

logger = logging.getLogger("llmqueue.worker")

# arq counts every start of a job (limiter re-defers, crash restarts) against max_tries; llmqueue keeps
# its own count of failed provider calls, so arq's ceiling only has to stay out of the way.
ARQ_MAX_TRIES = 1_000_000


async def run_job(ctx: dict[str, Any], payload: Any) -> None:
    """The one arq job function: hand the job to this worker's runner."""
    runner: JobRunner = ctx["llmqueue_runner"]
    await runner.run(ctx["job_id"], payload)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from a Redis URL (``redis://user:pass@host``, ``rediss://`` for TLS)."""
    return RedisSettings.from_dsn(settings.redis_url.get_secret_value())


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` (also the attributes of :data:`WorkerSettings`)."""
    worker = settings.worker
    worker_id = new_worker_id()

    async def on_startup(ctx: dict[str, Any]) -> None:
        store = JobStore(
            ctx["redis"], queue_name=worker.queue_name, job_ttl=worker.job_ttl, result_ttl=worker.result_ttl
        )
        ctx["llmqueue_runner"] = JobRunner(
            settings=settings, store=store, limiter=RateLimiter(ctx["redis"]), worker_id=worker_id
        )
        if worker.warm_up:
            try:
                await warm_up()
            except Exception as exc:  # a slower first call is all this costs
                logger.warning("LiteLLM warm-up failed: %s", exc)
        logger.info("llmqueue worker %s started on queue %s", worker_id, worker.queue_name)

    return {
        "functions": [func(run_job, name=serialization.JOB_FUNCTION, max_tries=ARQ_MAX_TRIES)],
        "queue_name": worker.queue_name,
        "redis_settings": redis_settings(settings),
        "on_startup": on_startup,
        "max_jobs": worker.max_jobs,
        "job_timeout": worker.job_timeout(_longest_llm_timeout(settings)),
        "keep_result": 0,
        "poll_delay": worker.poll_delay,
        "max_tries": ARQ_MAX_TRIES,
        "health_check_interval": worker.health_check_interval,
        "job_serializer": serialization.serialize,
        "job_deserializer": serialization.deserialize_job,
        "expires_extra_ms": int(worker.job_ttl * 1000),
    }


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    """An arq Worker for these settings; ``overrides`` go to ``arq.Worker`` (e.g. ``burst=True``)."""
    return Worker(**{**worker_options(settings), **overrides})


def _longest_llm_timeout(settings: Settings) -> float:
    return max([settings.llm.timeout, *(settings.llm_for(name).timeout for name in settings.llm_groups)])


def __getattr__(name: str) -> Any:
    # ``arq llmqueue.worker.WorkerSettings``: the settings are read when arq asks for the class.
    if name == "WorkerSettings":
        config = os.environ.get("LLMQUEUE_CONFIG")
        options = worker_options(load_settings(Path(config) if config else None))
        return type("WorkerSettings", (), options)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
