"""What a worker does after a failed call, end to end: a real Redis, the simulated provider, a worker in
this event loop, real LiteLLM calls. Timings are the provider's own (when it received each request)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.producer import Producer
from llmqueue.settings import LimitConfig
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
TPM = 60000


@pytest.mark.slow
async def test_a_lone_job_answered_429_keeps_the_seed_retry_schedule(
    redis_url: str, provider: RunningProvider
) -> None:
    # The settings: clamp(0.5 * 2^(n-1), 1, 4) → gaps of 1, 1, 2, 4 s. A 429 without
    # retry-after pauses the scope, but never for longer than the job's own delay. The scope has a
    # configured limit: a scope still probing for its limits (no headers seen yet) lets only a couple
    # of calls through every few seconds, which is the limiter's rule, not the retry schedule's.
    settings = make_settings(
        redis_url,
        provider.base_url,
        num_retries=4,
        retry_min_wait=1.0,
        retry_max_wait=4.0,
        retry_multiplier=0.5,
        limits={"openai/sim-model": LimitConfig(rpm=600)},
        worker={"warm_up": True},
    )
    provider.rate_limit_for(60)
    async with Producer(settings) as producer, running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=30)
    assert result.status == "failed"
    assert [e.kind for e in result.errors] == ["rate_limit"] * 5
    times = provider.stats.request_times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 4
    # Never early; late by at most half a second, which a loaded machine (the suite's other processes)
    # may add to a deferral, and still tells each step of the schedule from the next.
    for gap, expected in zip(gaps, [1.0, 1.0, 2.0, 4.0], strict=True):
        assert expected <= gap <= expected + 0.5, gaps


@pytest.fixture
async def tpm_provider() -> AsyncIterator[RunningProvider]:
    """A provider with a limit of ``TPM`` tokens per minute that sends no rate-limit headers (a proxy):
    the limiter knows no limit, so nothing but the too-large request's own handling can hold jobs up."""
    config = ProviderConfig(api_key=TEST_API_KEY, tpm=TPM, rate_limit_headers="none")
    async with run_provider(config) as running:
        yield running


@pytest.mark.slow
async def test_a_request_larger_than_the_tpm_limit_fails_at_once_and_holds_nobody_up(
    redis_url: str, redis: Redis, tpm_provider: RunningProvider
) -> None:
    settings = make_settings(redis_url, tpm_provider.base_url, num_retries=4)
    big = {"messages": [{"role": "user", "content": "x" * 4 * (TPM + 1000)}]}
    async with Producer(settings) as producer, running_worker(settings):
        began = time.monotonic()
        handles = [await producer.submit(big)] + [await producer.submit(CHAT) for _ in range(10)]
        results = await asyncio.gather(*(handle.result(timeout=20) for handle in handles))
        span = time.monotonic() - began
    too_large, *small = results
    assert too_large.status == "failed" and too_large.attempts == 1
    (error,) = too_large.errors
    assert error.kind == "request_too_large" and error.status_code == 429
    assert f"Limit {TPM}" in error.message and "Requested 61" in error.message
    assert all(r.status == "succeeded" and r.attempts == 1 for r in small)
    stats = tpm_provider.stats
    assert (stats.requests, stats.rate_limited, stats.succeeded) == (11, 1, 10)
    assert span < 5.0  # loose: the causal checks are the attempts above and the absent pause below
    assert await redis.hget(keys.limiter("openai/sim-model"), "cool") is None  # no scope pause
