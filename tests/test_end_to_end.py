"""End to end: jobs through separate worker processes, one shared limiter, real LiteLLM over HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.llm.backoff import RetryPolicy
from llmqueue.ops.processes import start_worker, stop_processes
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig, run_provider
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = pytest.mark.slow

RPM = 1200  # 20 requests/s, 20 at once: well below 200 jobs offered at once
WORKER_ENV = {
    "LLM_MODEL": "openai/sim-model",
    "LLM_API_KEY": TEST_API_KEY,
    "LLM_RPM": str(RPM),
    "LLM_RETRY_MIN_WAIT": "0.2",
    "LLM_RETRY_MAX_WAIT": "1",
    "LLM_RETRY_MULTIPLIER": "0.2",
    "WORKER_POLL_DELAY": "0.01",
}


@contextmanager
def worker_processes(count: int, env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [start_worker(env, stderr=subprocess.PIPE) for _ in range(count)]
    try:
        yield processes
    finally:
        stop_processes(processes, timeout=15)


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_200_jobs_through_3_worker_processes_under_the_provider_limit(redis_url: str) -> None:
    config = ProviderConfig(api_key=TEST_API_KEY, rpm=RPM, latency=0.05, latency_jitter=0.5)
    with ProviderProcess(config) as provider:
        env = {**WORKER_ENV, "REDIS_URL": redis_url, "LLM_BASE_URL": provider.base_url}
        settings = make_settings(redis_url, provider.base_url)
        provider.control("fail_next", count=6, status=429)  # must be re-enqueued, not lost
        with worker_processes(3, env) as processes:
            async with Producer(settings) as producer:
                jobs = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(200)]
                handles = await producer.submit_many(jobs)
                results = [r async for r in producer.as_completed(handles, timeout=90)]
                result_keys = [k async for k in producer.redis.scan_iter(match=keys.result("*"))]
            assert all(p.poll() is None for p in processes), "a worker died"
        stats = provider.stats()

    assert len(results) == 200
    assert sorted(r.job_id for r in results) == sorted(h.job_id for h in handles)
    assert all(r.status == "succeeded" for r in results)
    assert len(result_keys) == 200  # exactly one result per job
    assert len({r.worker_id for r in results}) == 3  # the work was shared

    # What the workers sent, 429s included, stayed near the limit: 20/s with a 1 s burst of 20. The
    # provider rejects excess itself; this checks that the shared limiter kept it from being sent.
    # Arrival times carry the provider process's own scheduling delays on a busy machine, hence the
    # 1.5x margin; limiters that were not shared would send 3x, all 200 jobs in the first second.
    times = stats["request_times"]
    per_second = RPM / 60
    busiest = max_in_window(times, 1.0)
    elapsed = max(times) - min(times)
    assert busiest <= 1.5 * (per_second + per_second * 1.0)
    assert stats["requests"] <= 1.1 * (per_second + per_second * elapsed) + 6

    # The injected 429s were retried after the policy's delays.
    policy = RetryPolicy(min_wait=0.2, max_wait=1, multiplier=0.2)
    retried = [r for r in results if r.errors]
    assert sum(len(r.errors) for r in retried) >= 6
    for result in retried:
        for n, error in enumerate(result.errors, start=1):
            assert error.kind == "rate_limit"
            assert error.retry_in == policy.delay(n)
    print(
        f"\n200 jobs, 3 workers: {stats['requests']} provider requests, {stats['rate_limited']} 429s "
        f"(6 injected), at most {busiest} in any 1 s, {elapsed:.1f} s"
    )


async def test_worker_settings_class_works_with_arq_cli(redis_url: str, redis: Redis) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "WORKER_"))},
            **WORKER_ENV,
            "REDIS_URL": redis_url,
            "LLM_BASE_URL": provider.base_url,
        }
        settings = make_settings(redis_url, provider.base_url)
        async with Producer(settings) as producer:
            handle = await producer.submit({"messages": [{"role": "user", "content": "via arq"}]})
        # Not subprocess.run: the provider answers from this event loop, which must keep running.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "arq",
            "llmqueue.worker.WorkerSettings",
            "--burst",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()[-2000:]
        async with Producer(settings) as producer:
            result = await producer.handle(handle.job_id).result(timeout=5)
    assert result.text == "echo: via arq"
