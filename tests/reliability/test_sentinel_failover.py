"""Redis Sentinel: a master, its replica and three sentinels on loopback; the master is killed (SIGKILL)
mid-run and the sentinels promote the replica. Workers and the producer, given only the sentinels,
follow the new master: every job ends exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.models import JobResult
from llmqueue.producer import JobHandle, Producer
from tests.support.reliability import chat_jobs, child_env, wait_until
from tests.support.sentinel import run_through_sentinels

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


async def _collect(producer: Producer, handles: list[JobHandle]) -> list[JobResult]:
    return [result async for result in producer.as_completed(handles)]


async def test_jobs_run_through_the_sentinels_end_once_when_the_master_is_killed(tmp_path: Path) -> None:
    jobs, slots = 300, 10
    async with run_through_sentinels(tmp_path, slots=slots) as run:
        servers, provider, workers, producer = run.servers, run.provider, run.workers, run.producer
        handles = await producer.submit_many(chat_jobs(jobs, "failover"))
        collected = asyncio.ensure_future(_collect(producer, handles))
        await wait_until(lambda: provider.stats()["requests"] >= 60, 60, "a fifth of the calls")
        in_flight = sum(len(w.calling()) for w in workers.all)
        killed = time.monotonic()
        servers.kill_master()
        results = await asyncio.wait_for(collected, 180)
        took = time.monotonic() - killed
        result_keys = [k async for k in producer.redis.scan_iter(match=keys.result("*"))]
        new_master = servers.master_port_now()
        alive = len(workers.alive)
        # A CLI command given only the sentinels reads the new master.
        health = subprocess.run(
            [sys.executable, "-m", "llmqueue", "health", "--redis-url", servers.url],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
        )
        stats = provider.stats()

    print(
        f"\nSentinel failover: {jobs} jobs, 2 workers x {slots} slots; master killed with {in_flight} calls "
        f"in flight; all results {took:.1f} s later; {len(results)} results "
        f"({sum(r.ok for r in results)} succeeded), {len(result_keys)} result keys; provider requests "
        f"{stats['requests']}; master port {run.first_master} -> {new_master}"
    )
    assert new_master == servers.replica_port != run.first_master
    assert sorted(r.job_id for r in results) == sorted(h.job_id for h in handles)  # each once
    assert all(r.ok for r in results)
    assert len(result_keys) == jobs
    assert alive == 2
    assert health.returncode == 0 and "2 live worker(s)" in health.stdout, health.stdout + health.stderr
    # Replication is asynchronous: what the old master took in its last moment (a claim, a stored
    # result) may be lost, and the job runs again; at most the calls in flight, plus those a claim
    # lost with the master could have started again.
    assert stats["requests"] <= jobs + 2 * slots
