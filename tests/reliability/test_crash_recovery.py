"""Scenario 1: a worker killed (SIGKILL) mid-batch, and a call slower than the in-progress TTL.

The issue's numbers are 300 jobs, 3 workers and 0.5 s calls; the in-progress TTL is cut from its 20 s
default to 4 s (heartbeat 1 s) so a recovery fits in a CI run, and each worker takes at most 8 jobs at a
time so the batch lasts long enough to kill workers in the middle of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import chat_jobs, wait_for_results, wait_until, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

JOBS = 300
IN_PROGRESS_TTL = 4.0
HEARTBEAT = 1.0
# A freed job waits for the next poll and a free slot in a busy worker; 2.5 s covers both on 2 cores.
RECOVERY_MARGIN = 2.5

# Worker start-up (importing LiteLLM) takes seconds, more on a busy CI machine.
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


async def test_jobs_of_killed_workers_run_again_within_the_in_progress_ttl(
    redis_url: str, tmp_path: Path
) -> None:
    config = ProviderConfig(api_key=TEST_API_KEY, latency=0.5)
    with ProviderProcess(config) as provider:
        env = worker_env(
            redis_url,
            provider.base_url,
            TEST_API_KEY,
            worker_max_jobs=8,
            worker_in_progress_ttl=IN_PROGRESS_TTL,
            worker_heartbeat_interval=HEARTBEAT,
        )
        settings = make_settings(redis_url, provider.base_url)
        with worker_processes(env, tmp_path) as workers:
            first, second, _ = await workers.start_ready(3)
            async with Producer(settings) as producer:
                began = time.monotonic()
                await producer.submit_many(chat_jobs(JOBS, "crash"))
                await wait_until(lambda: len(first.calling()) >= 3, 60, "worker0 making calls")
                first.kill()
                replacement = workers.start()[0]  # comes up while the batch goes on
                await asyncio.sleep(1.5)
                await wait_until(lambda: len(second.calling()) >= 3, 60, "worker1 making calls")
                second.kill()  # this one is not replaced
                results = await wait_for_results(producer.redis, [f"crash-{n}" for n in range(JOBS)], 120)
                elapsed = time.monotonic() - began
                result_keys = [k async for k in producer.redis.scan_iter(match=keys.result("*"))]
                done_lengths = [await producer.redis.llen(keys.done(job_id)) for job_id in results]
            assert replacement.alive and len(workers.alive) == 2
            events = workers.events()
        stats = provider.stats()

    assert all(r.status == "succeeded" for r in results.values())
    assert len(result_keys) == JOBS  # one result per job ...
    assert set(done_lengths) == {1}  # ... stored once (a second store would have woken waiters again)

    recoveries: list[float] = []
    cut_jobs: set[str] = set()
    for victim in (first, second):
        assert victim.killed_at is not None
        killed_at = victim.killed_at
        held = victim.held()
        cut_jobs |= victim.calling()
        for job_id in held:
            picks = [e.at for e in events if e.job_id == job_id and e.event == "picked" and e.at > killed_at]
            if not picks:
                # The victim stored the result and was killed before its log said so: its own, made before
                # the kill, is the only result a job that no one picked again may have.
                result = results[job_id]
                assert f":{victim.pid}:" in (result.worker_id or ""), (job_id, result.worker_id)
                finished = result.timings.finished_at.timestamp()
                assert finished <= killed_at, (job_id, finished, killed_at)
                continue
            recoveries.append(min(picks) - killed_at)
            assert results[job_id].worker_id not in ("", None)
    cut_calls = len(cut_jobs)
    duplicates = stats["requests"] - JOBS
    starts = Counter(e.job_id for e in events if e.event == "started")
    called_twice = {job_id for job_id, count in starts.items() if count > 1}
    completions = sum(1 for e in events if e.event == "succeeded")
    print(
        f"\ncrash: {JOBS} jobs, 3 workers (max_jobs 8, calls 0.5 s), 2 SIGKILLs while holding "
        f"{len(recoveries)} jobs ({cut_calls} with a call in flight); batch {elapsed:.1f} s. Picked up "
        f"again after the kill: min {min(recoveries):.1f} s, max {max(recoveries):.1f} s (in_progress_ttl "
        f"{IN_PROGRESS_TTL:g} s, heartbeat {HEARTBEAT:g} s). Provider requests {stats['requests']} → "
        f"{duplicates} duplicated call(s); {completions} completions logged; {len(result_keys)} results."
    )
    # Most jobs are picked up again within the TTL plus a sweep (~5 s here); on a loaded CI machine one
    # took 10.2 s once with the batched claim (cause not found, noted on issue 15): the bound allows it.
    assert sorted(recoveries)[len(recoveries) // 2] <= IN_PROGRESS_TTL + RECOVERY_MARGIN
    assert max(recoveries) <= 2 * IN_PROGRESS_TTL + 2 * RECOVERY_MARGIN
    # Only the calls in flight at the kills may have been made twice, and each of those at most twice.
    assert set(starts) == set(results)
    assert called_twice <= cut_jobs
    assert duplicates <= sum(count - 1 for count in starts.values()) <= cut_calls


async def test_a_call_slower_than_the_in_progress_ttl_is_not_run_twice(
    redis_url: str, tmp_path: Path
) -> None:
    jobs = 6
    config = ProviderConfig(api_key=TEST_API_KEY, latency=6.0)  # 1.5 x the in-progress TTL
    with ProviderProcess(config) as provider:
        env = worker_env(
            redis_url,
            provider.base_url,
            TEST_API_KEY,
            worker_in_progress_ttl=IN_PROGRESS_TTL,
            worker_heartbeat_interval=HEARTBEAT,
        )
        settings = make_settings(redis_url, provider.base_url)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(2)  # the idle one polls all the time and would take a lapsed job
            async with Producer(settings) as producer:
                handles = await producer.submit_many(chat_jobs(jobs, "slow"))
                results = [r async for r in producer.as_completed(handles, timeout=30)]
        stats = provider.stats()

    assert [r.status for r in results] == ["succeeded"] * jobs
    assert all(r.attempts == 1 for r in results)
    print(
        f"\nslow calls: {jobs} calls of 6 s with in_progress_ttl {IN_PROGRESS_TTL:g} s, heartbeat "
        f"{HEARTBEAT:g} s, 2 workers: {stats['requests']} provider requests"
    )
    assert stats["requests"] == jobs
