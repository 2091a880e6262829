"""Scenario 4: a provider that answers nothing but 429 for 15 s, one that fails 20% of calls with a 5xx
or a hang, and one that refuses the key (401).

The storm runs on the default retry schedule (num_retries 4, delays 5, 5, 8, 16 s) and the default
scope pause after a 429 (the provider's retry-after, or 1 s; never lengthened by us, so that a job's own
schedule holds), with the scope limited to 300 requests/min so that calls leave a pause spaced, as in
production. Jobs
are few (25) so the test stays short; the 5xx test uses short retry waits (0.2-1 s) for the same reason.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path

import pytest

from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import Workers, chat_jobs, wait_for_results, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

STORM = 15.0  # seconds of nothing but 429s
RPM = 300


async def test_a_429_storm_pauses_the_batch_which_completes_on_the_default_retry_schedule(
    redis_url: str, tmp_path: Path
) -> None:
    jobs = 25
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.05)) as provider:
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY, llm_rpm=RPM)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(2)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                for retry_after in (None, 3.0):
                    await _storm(provider, producer, workers, jobs, retry_after)


async def _storm(
    provider: ProviderProcess, producer: Producer, workers: Workers, jobs: int, retry_after: float | None
) -> None:
    provider.control("reset")
    provider.control("rate_limit_for", seconds=STORM, retry_after=retry_after)
    began = time.monotonic()
    prefix = f"storm-{retry_after}"
    await producer.submit_many(chat_jobs(jobs, prefix))
    results = await wait_for_results(producer.redis, [f"{prefix}-{n}" for n in range(jobs)], 120)
    elapsed = time.monotonic() - began
    stats = provider.stats()
    assert len(workers.alive) == 2

    times = sorted(stats["request_times"])
    per_second = Counter(int(t - times[0]) for t in times)
    attempts = Counter(r.attempts for r in results.values())
    failed_calls = sum(len(r.errors) for r in results.values())
    print(
        f"\n429 storm of {STORM:g} s, retry-after {retry_after}: {jobs} jobs at {RPM} rpm, default retries; "
        f"{sum(r.ok for r in results.values())}/{jobs} succeeded after {elapsed:.1f} s; "
        f"{stats['rate_limited']} 429s (a job burning every retry would make {jobs * 5}); attempts per "
        f"job {dict(sorted(attempts.items()))}; requests per second "
        f"{[per_second.get(s, 0) for s in range(int(times[-1] - times[0]) + 1)]}"
    )
    assert all(r.ok for r in results.values())
    assert failed_calls == stats["rate_limited"]  # every 429 was recorded against its job
    # Each job is refused at most once per delay of its own schedule: the delays 5 and 5 s fit three
    # attempts into the storm, the fourth (after 8 s more) comes after it, with a retry left.
    assert stats["rate_limited"] <= 3 * jobs
    assert max(attempts) <= 4
    for result in results.values():
        for error, later in itertools.pairwise(result.errors):
            assert error.retry_in is not None
            assert (later.at - error.at).total_seconds() >= error.retry_in - 0.1  # never sooner


async def test_5xx_and_timeouts_are_retried_and_401_fails_at_once(redis_url: str, tmp_path: Path) -> None:
    jobs = 40
    config = ProviderConfig(
        api_key=TEST_API_KEY, latency=0.05, error_rate=0.1, timeout_rate=0.1, hang_seconds=3, seed=20261124
    )
    # A named group whose key is wrong: its jobs reach the same provider and get a real 401.
    (tmp_path / "config.toml").write_text('[llm.wrong-key]\napi_key = "sk-wrong-key-00000000000000"\n')
    with ProviderProcess(config) as provider:
        env = worker_env(
            redis_url,
            provider.base_url,
            TEST_API_KEY,
            llm_timeout=1,
            llm_retry_min_wait=0.2,
            llm_retry_max_wait=1,
            llm_retry_multiplier=0.2,
        )
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(2)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                await producer.submit_many(chat_jobs(20, "unauthorized", llm_config="wrong-key"))
                refused = await wait_for_results(producer.redis, [f"unauthorized-{n}" for n in range(20)], 60)
                refused_requests = provider.stats()["requests"]
                provider.control("reset")

                await producer.submit_many(chat_jobs(jobs, "flaky"))
                results = await wait_for_results(producer.redis, [f"flaky-{n}" for n in range(jobs)], 120)
            assert len(workers.alive) == 2
        stats = provider.stats()

    messages = {r.error.message for r in refused.values() if r.error}
    print(
        f"\n401: {len(refused)} jobs failed at once, {refused_requests} provider requests; "
        f"e.g. {min(messages)!r}"
    )
    assert all(r.status == "failed" and r.attempts == 1 for r in refused.values())
    assert all(r.error and r.error.kind == "auth" and r.error.status_code == 401 for r in refused.values())
    assert all("Incorrect API key provided" in message for message in messages)
    assert refused_requests == 20

    kinds = Counter(e.kind for r in results.values() for e in r.errors)
    attempts = Counter(r.attempts for r in results.values())
    print(
        f"20% faults (10% 5xx, 10% hangs > LLM_TIMEOUT 1 s): {sum(r.ok for r in results.values())}/{jobs} "
        f"succeeded; failed calls {dict(kinds)}; attempts per job {dict(sorted(attempts.items()))}; "
        f"provider requests {stats['requests']}, errors {stats['errors']}"
    )
    # Five bad draws in a row for one job (p = 0.2^5 per job, ~1% per run of 40) exhaust its retries:
    # then, and only then, it fails, with every attempt's error.
    for result in results.values():
        assert result.ok or (result.attempts == 5 and len(result.errors) == 5), result
    assert set(kinds) <= {"server_error", "timeout"}
    assert stats["requests"] == sum(r.attempts for r in results.values())  # no hidden retries
