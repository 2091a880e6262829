"""What a worker does after a failed call, end to end: a real Redis, the simulated provider, a worker in
this event loop, real LiteLLM calls. Timings are the provider's own (when it received each request)."""

from __future__ import annotations

import itertools

import pytest

from llmqueue.producer import Producer
from llmqueue.settings import LimitConfig
from llmqueue.simulator.server import RunningProvider
from tests.support.settings import make_settings, running_worker

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


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
    for gap, expected in zip(gaps, [1.0, 1.0, 2.0, 4.0], strict=True):
        assert expected <= gap <= expected + 0.3, gaps
