"""Scenario 2: SIGTERM to a worker with calls in flight.

Two workers share the queue, each taking at most 4 jobs at a time, and there are more jobs than both can
hold: once the stopping worker's calls end, queued jobs are there for it to take, and it must not.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.answered import heard_before
from tests.support.reliability import (
    MODEL,
    chat_jobs,
    wait_for_results,
    wait_until,
    worker_env,
    worker_processes,
)
from tests.support.settings import TEST_API_KEY, make_settings

LATENCY = 3.0
EXIT_MARGIN = 5.0  # closing connections and leaving the interpreter, on a busy machine

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
# A limit that never binds, on a scope that has heard from its provider before (heard_before): a new
# scope probes its limits with two calls at first, and the jobs waiting for the probe would hold worker
# slots this test counts as in flight.
UNBINDING_RPM = 60_000


async def test_sigterm_lets_calls_in_flight_finish_and_takes_no_new_job(
    redis_url: str, tmp_path: Path
) -> None:
    grace = 8.0  # longer than the calls
    jobs = 12
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=LATENCY)) as provider:
        with worker_processes(_env(redis_url, provider.base_url, grace), tmp_path) as workers:
            stopping, other = await workers.start_ready(2)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                await heard_before(producer.redis, MODEL)
                await producer.submit_many(chat_jobs(jobs, "term"))
                await wait_until(lambda: len(stopping.calling()) == 4, 60, "4 calls in flight")
                in_flight = stopping.calling()
                stopping.terminate()
                signalled = time.time()
                code = await stopping.wait_exit(grace + EXIT_MARGIN)
                exit_after = time.time() - signalled
                results = await wait_for_results(producer.redis, [f"term-{n}" for n in range(jobs)], 60)
                result_keys = [k async for k in producer.redis.scan_iter(match=keys.result("*"))]
            assert other.alive
        stats = provider.stats()

    stopped = stopping.logged_at("stopped")
    assert stopped is not None
    picked_after_signal = [e for e in stopping.events() if e.event == "picked" and e.at > signalled]
    stopping_id = results[next(iter(in_flight))].worker_id
    by_stopping = {job_id for job_id, result in results.items() if result.worker_id == stopping_id}
    print(
        f"\nSIGTERM, grace {grace:g} s, {len(in_flight)} calls of {LATENCY:g} s in flight: worker stopped "
        f"after {stopped - signalled:.1f} s, exit code {code} after {exit_after:.1f} s; jobs picked after "
        f"the signal {len(picked_after_signal)}; {len(results)}/{jobs} results, "
        f"{stats['requests']} provider requests"
    )
    assert code == 0
    assert exit_after <= LATENCY + EXIT_MARGIN  # it waited for its calls, not the whole grace period
    assert picked_after_signal == []
    assert by_stopping == in_flight  # its calls finished there; nothing else was taken
    assert all(r.status == "succeeded" and r.attempts == 1 for r in results.values())
    assert len(result_keys) == jobs
    assert stats["requests"] == jobs  # nothing run twice


async def test_calls_longer_than_the_grace_period_go_back_and_finish_elsewhere(
    redis_url: str, tmp_path: Path
) -> None:
    grace = 1.0  # shorter than the calls
    jobs = 8
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=LATENCY)) as provider:
        with worker_processes(_env(redis_url, provider.base_url, grace), tmp_path) as workers:
            stopping, other = await workers.start_ready(2)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                await heard_before(producer.redis, MODEL)
                await producer.submit_many(chat_jobs(jobs, "cut"))
                await wait_until(lambda: len(stopping.calling()) >= 1, 60, "calls in flight")
                stopping.terminate()
                signalled = time.time()
                code = await stopping.wait_exit(grace + EXIT_MARGIN)
                exit_after = time.time() - signalled
                results = await wait_for_results(producer.redis, [f"cut-{n}" for n in range(jobs)], 60)
                result_keys = [k async for k in producer.redis.scan_iter(match=keys.result("*"))]
            assert other.alive
        stats = provider.stats()

    stopped = stopping.logged_at("stopped")
    assert stopped is not None
    interrupted = {e.job_id for e in stopping.events() if e.event == "interrupted"}
    finished_by = {results[job_id].worker_id for job_id in interrupted}
    print(
        f"\nSIGTERM, grace {grace:g} s, calls of {LATENCY:g} s: worker stopped after "
        f"{stopped - signalled:.1f} s, exit code {code} after {exit_after:.1f} s; "
        f"{len(interrupted)} call(s) cut and put back, finished by another worker; {stats['requests']} "
        f"provider requests for {jobs} jobs"
    )
    assert code == 0
    assert grace <= stopped - signalled and exit_after <= grace + EXIT_MARGIN
    assert interrupted
    assert len(finished_by) == 1 and None not in finished_by
    assert all(r.status == "succeeded" for r in results.values())
    assert all(r.attempts == 1 and r.errors == [] for r in results.values())  # a cut call is no attempt
    assert len(result_keys) == jobs
    assert stats["requests"] == jobs + len(interrupted)  # the cut calls were made again


def _env(redis_url: str, base_url: str, grace: float) -> dict[str, str]:
    """Two-worker settings: 4 slots each, ``grace`` seconds to stop, a limit that never binds."""
    return worker_env(
        redis_url,
        base_url,
        TEST_API_KEY,
        worker_max_jobs=4,
        worker_shutdown_grace=grace,
        llm_rpm=UNBINDING_RPM,
    )
