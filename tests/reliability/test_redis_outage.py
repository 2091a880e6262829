"""Scenario 3: Redis restarted mid-batch, Redis unreachable when a worker starts, and a producer that
cannot reach Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.errors import RedisUnavailableError
from llmqueue.models import JobResult
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import JobHandle, Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import chat_jobs, wait_until, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


async def test_batch_completes_through_a_redis_restart(tmp_path: Path) -> None:
    jobs = 200
    with (
        EmbeddedRedis(appendonly=True) as server,
        ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.3)) as provider,
    ):
        env = worker_env(server.url, provider.base_url, TEST_API_KEY, worker_max_jobs=5)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(2)
            async with Producer(make_settings(server.url, provider.base_url)) as producer:
                handles = await producer.submit_many(chat_jobs(jobs, "restart"))
                collected = asyncio.ensure_future(_collect(producer, handles))
                await wait_until(lambda: sum(len(w.calling()) for w in workers.all) >= 5, 60, "calls")
                await asyncio.sleep(1.0)
                stopped = time.monotonic()
                server.kill()  # a crash: SIGKILL; AOF with fsync always kept every acknowledged write
                await asyncio.sleep(2.0)
                server.start()  # the same port and directory
                outage = time.monotonic() - stopped
                results = await asyncio.wait_for(collected, 120)
                result_keys = [k async for k in producer.redis.scan_iter(match=keys.result("*"))]
            alive = len(workers.alive)
            warnings = sum(w.stderr().count("WARNING") for w in workers.all)
            dead_logs = [w.stderr()[-3000:] for w in workers.all if not w.alive]
        stats = provider.stats()

    print(
        f"\nRedis restart: {jobs} jobs, 2 workers; Redis down {outage:.1f} s mid-batch; {len(results)} "
        f"results ({sum(r.ok for r in results)} succeeded), {len(result_keys)} result keys; workers alive "
        f"{alive}/2; {warnings} warnings logged; provider requests {stats['requests']} "
        f"({stats['requests'] - jobs} duplicated)"
    )
    assert sorted(r.job_id for r in results) == sorted(h.job_id for h in handles)
    assert all(r.ok for r in results)
    assert len(result_keys) == jobs
    assert alive == 2, f"a worker died; its last log lines:\n{dead_logs}"  # no crash, so no crash loop


async def _collect(producer: Producer, handles: list[JobHandle]) -> list[JobResult]:
    return [result async for result in producer.as_completed(handles)]


async def test_worker_waits_for_redis_at_start_and_logs_why(tmp_path: Path) -> None:
    password = "redis-pw-7c1d5e9a"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        server = EmbeddedRedis(password=password)
        try:
            server.start()
            server.stop()  # the port is known, and nothing listens on it
            env = worker_env(server.url, provider.base_url, TEST_API_KEY)
            with worker_processes(env, tmp_path) as workers:
                (worker,) = workers.start()
                launched = time.monotonic()
                # Each start-up attempt retries its PING with backoff (~17 s) before arq logs it.
                await wait_until(lambda: "redis connection error" in worker.stderr(), 90, "a retry logged")
                first_log_after = time.monotonic() - launched
                await asyncio.sleep(2)
                assert worker.alive
                server.start()
                came_up = time.monotonic()
                await worker.wait_started()
                ready_after = time.monotonic() - came_up
                async with Producer(make_settings(server.url, provider.base_url)) as producer:
                    handle = await producer.submit(chat_jobs(1, "late")[0])
                    result = await handle.result(timeout=30)
                log = worker.output()
        finally:
            server.close()

    first_line = next(line for line in log.splitlines() if "redis connection error" in line)
    print(
        f"\nRedis down at worker start: first retry logged {first_log_after:.1f} s after launch: "
        f"{first_line[24:]!r}; still running; ready {ready_after:.1f} s after Redis came up; job "
        f"{result.status}"
    )
    assert f"127.0.0.1:{server.port}" in first_line and "Connect" in first_line
    assert "retries remaining" in first_line
    assert result.ok
    assert password not in log


async def test_producer_raises_redis_unavailable_quickly(redis_url: str) -> None:
    server = EmbeddedRedis()
    server.start()
    server.stop()
    settings = make_settings(server.url, "http://127.0.0.1:9/v1")
    began = time.monotonic()
    with pytest.raises(RedisUnavailableError, match=f"127.0.0.1:{server.port}"):
        async with Producer(settings):
            pass
    took = time.monotonic() - began
    server.close()
    print(f"\nProducer with Redis down: RedisUnavailableError after {took:.2f} s")
    assert took < 3
