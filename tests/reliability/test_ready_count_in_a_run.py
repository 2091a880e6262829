"""The set KEDA counts (``keys.ready``) during a real run: one worker with fewer slots than jobs, a
provider that fails some calls (their retries wait out a delay): at every moment it holds exactly the
queued jobs that are neither running nor waiting for a later time, and it is empty when all are done."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.models import JobResult
from llmqueue.producer import JobHandle, Producer
from llmqueue.settings import WorkerConfig
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import chat_jobs, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
QUEUE = WorkerConfig().queue_name


async def collect(producer: Producer, handles: list[JobHandle]) -> list[JobResult]:
    return [result async for result in producer.as_completed(handles)]


async def snapshot(redis: Redis) -> tuple[int, int, int, int]:
    """(ready, queued in arq's queue, running, deferred), read in one transaction."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.scard(keys.ready(QUEUE))
        pipe.zcard(QUEUE)
        pipe.zcard(keys.claimed(QUEUE))
        pipe.zcard(keys.delayed(QUEUE))
        ready, queued, running, deferred = await pipe.execute()
    return ready, queued, running, deferred


async def test_the_ready_set_counts_only_jobs_waiting_for_a_slot_and_ends_at_zero(
    redis_url: str, tmp_path: Path
) -> None:
    jobs, slots = 60, 4
    config = ProviderConfig(api_key=TEST_API_KEY, latency=0.1, error_rate=0.2)
    with ProviderProcess(config) as provider:
        env = worker_env(
            redis_url,
            provider.base_url,
            TEST_API_KEY,
            worker_max_jobs=slots,
            llm_retry_min_wait=0.3,
            llm_retry_max_wait=0.6,
        )
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(1)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                handles = await producer.submit_many(chat_jobs(jobs, "depth"))
                collected = asyncio.ensure_future(collect(producer, handles))
                samples = []
                while not collected.done():
                    samples.append(await snapshot(producer.redis))
                    await asyncio.sleep(0.02)
                results = collected.result()
                final = await snapshot(producer.redis)
    assert len(results) == jobs
    for ready, queued, running, deferred in samples:
        assert ready == queued - running - deferred, (ready, queued, running, deferred)
    assert max(ready for ready, *_ in samples) >= jobs - 2 * slots  # more ready jobs than slots: counted
    assert any(deferred for *_, deferred in samples)  # retries waited out a delay, uncounted
    assert final == (0, 0, 0, 0)
