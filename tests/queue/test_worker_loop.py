"""The worker loop against a real Redis and the simulated provider: arq's own client, the counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from arq.connections import create_pool
from typer.testing import CliRunner

from llmqueue.cli import app
from llmqueue.ops.counters import JobCounts
from llmqueue.ops.registry import read_workers
from llmqueue.producer import Producer
from llmqueue.queue import payload
from llmqueue.settings import Settings
from llmqueue.simulator.server import RunningProvider
from llmqueue.worker import create_worker, redis_settings
from tests.support.settings import make_settings, running_worker

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


async def test_a_job_enqueued_with_arqs_own_enqueue_job_runs(settings: Settings, producer: Producer) -> None:
    queue = settings.worker.queue_name
    arq = await create_pool(
        redis_settings(settings), job_serializer=payload.serialize, job_deserializer=payload.deserialize_job
    )
    try:
        job = {"id": "via-arq", "messages": [{"role": "user", "content": "from arq"}], "priority": 5}
        queued = await arq.enqueue_job(payload.JOB_FUNCTION, job, _job_id="via-arq", _queue_name=queue)
        assert queued is not None
        async with running_worker(settings):
            result = await producer.handle("via-arq").result(timeout=15)
        assert await queued.status() == "not_found"  # the run ended in arq's terms too: nothing left
    finally:
        await arq.close(close_connection_pool=True)
    assert result.status == "succeeded" and result.text == "echo: from arq"


async def test_a_job_arq_deferred_with_its_defer_by_runs_once_due(
    settings: Settings, producer: Producer
) -> None:
    arq = await create_pool(redis_settings(settings), job_serializer=payload.serialize)
    try:
        job = {"id": "later", **CHAT}
        enqueued = datetime.now(UTC)
        await arq.enqueue_job(
            payload.JOB_FUNCTION, job, _job_id="later", _queue_name=settings.worker.queue_name, _defer_by=0.5
        )
        async with running_worker(settings):
            result = await producer.handle("later").result(timeout=15)
    finally:
        await arq.close(close_connection_pool=True)
    assert result.status == "succeeded"
    assert result.timings.started_at is not None
    assert (result.timings.started_at - enqueued).total_seconds() >= 0.45


async def test_health_counts_limiter_deferrals_apart_from_retries_after_failed_calls(
    redis_url: str, provider: RunningProvider
) -> None:
    # One request a second and no waiting in place: the second job is deferred by the limiter (no
    # attempt); the first call is answered 429 once, so that job is retried (an attempt spent).
    settings = make_settings(
        redis_url,
        provider.base_url,
        rpm=60,
        worker={"max_inline_wait": 0.0, "heartbeat_interval": 0.1, "in_progress_ttl": 2},
    )
    provider.fail_next(1, 429, retry_after=0.1)
    async with Producer(settings) as producer, running_worker(settings) as worker:
        handles = await producer.submit_many([CHAT, CHAT])
        results = [await h.result(timeout=20) for h in handles]
        counts = worker.counter.counts
        await asyncio.sleep(0.3)  # a heartbeat writes the counts into the worker's registry entry
        (info,) = await read_workers(producer.redis)
        health = await asyncio.to_thread(CliRunner().invoke, app, ["health", "--redis-url", redis_url])
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert sum(r.attempts for r in results) == 3  # two answers and the one 429
    assert counts.succeeded == 2 and counts.failed == 0
    assert counts.retried == 1
    assert counts.deferred >= 1
    assert info.jobs == counts
    assert health.exit_code == 0, health.output
    assert (
        f"2 succeeded, 0 failed; 1 retried after a failed call, {counts.deferred} deferred by the limiter"
        in health.stdout
    )


def test_the_counts_of_several_workers_add_up_and_read_back_from_their_fields() -> None:
    one = JobCounts(succeeded=3, retried=1, deferred=7)
    other = JobCounts.from_fields({"jobs_succeeded": "2", "jobs_failed": "1", "jobs_deferred": "4"})
    assert JobCounts.from_fields({k: str(v) for k, v in one.as_fields().items()}) == one
    assert JobCounts.total([one, other]) == JobCounts(succeeded=5, failed=1, retried=1, deferred=11)
    assert JobCounts.from_fields({}) == JobCounts()  # an older worker's entry has none


async def test_a_worker_stopped_while_it_starts_up_ends_once_started_without_taking_a_job(
    settings: Settings, producer: Producer
) -> None:
    handle = await producer.submit(CHAT)
    worker = create_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.main())
    worker.stop()  # as SIGTERM during start-up (LiteLLM's warm-up takes seconds)
    await asyncio.wait_for(task, 30)
    assert worker.job_loop is not None and worker.counter.counts == JobCounts()
    assert await producer.redis.zscore(settings.worker.queue_name, handle.job_id) is not None
    assert await read_workers(producer.redis) == []  # it left the registry on its way out
