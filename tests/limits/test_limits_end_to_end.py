"""Every job runs under a limit: configured for any model, learnt from the provider's headers, lowered
by another client on the key. A worker in this loop, the simulated provider in a process of its own
(its clock undisturbed by the test's loop), jobs naming their own models as users' jobs do.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue.limits.limiter import RateLimiter
from llmqueue.producer import Producer
from llmqueue.settings import LLMConfig, Settings, WorkerConfig
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.settings import TEST_API_KEY, running_worker

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

KEY_RPM = 600  # 10 requests a second over a 1 s bucket
JOBS = 60  # 6 s at the key's limit; unlimited they would all go in the first second


def settings_for(redis_url: str, base_url: str, **llm: Any) -> Settings:
    groups = llm.pop("groups", {})
    return Settings(
        redis_url=redis_url,
        llm=LLMConfig(
            model="openai/sim-model",
            base_url=base_url,
            api_key=TEST_API_KEY,
            retry_min_wait=0.2,
            retry_max_wait=1,
            retry_multiplier=0.2,
            num_retries=8,
            timeout=10,
            **llm,
        ),
        llm_groups=groups,
        # Warmed up, as workers are by default: a cold first LiteLLM call holds back the first second.
        worker=WorkerConfig(poll_delay=0.01, warm_up=True),
    )


def jobs(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"question {n}"}], **fields} for n in range(count)]


async def run_all(settings: Settings, job_list: list[dict[str, Any]]) -> float:
    """Run the jobs through one worker; all must succeed. Returns the seconds they took."""
    began = time.monotonic()
    async with running_worker(settings), Producer(settings) as producer:
        handles = await producer.submit_many(job_list)
        results = [r async for r in producer.as_completed(handles, timeout=120)]
    assert [r.status for r in results] == ["succeeded"] * len(job_list), [r.errors for r in results][:3]
    return time.monotonic() - began


async def test_llm_rpm_limits_jobs_naming_another_model(redis_url: str, redis: Redis) -> None:
    provider_config = ProviderConfig(
        api_key=TEST_API_KEY, rpm=KEY_RPM, latency=0.05, rate_limit_headers="none"
    )
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(redis_url, provider.base_url, rpm=KEY_RPM)
        await run_all(settings, jobs(JOBS, model="openai/gpt-4o-mini"))
        stats = provider.stats()
    assert stats["rate_limited"] <= 2, stats["rate_limited"]
    state = await RateLimiter(redis).inspect("openai/gpt-4o-mini")
    assert (state.source, state.rpm) == ("configured", KEY_RPM)


async def test_llm_rpm_limits_a_group_and_a_per_job_model_each_in_its_own_bucket(
    redis_url: str, redis: Redis
) -> None:
    # The key allows 20/s in all; LLM_RPM gives each of the two scopes 10/s.
    provider_config = ProviderConfig(
        api_key=TEST_API_KEY, rpm=2 * KEY_RPM, latency=0.05, rate_limit_headers="none"
    )
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(
            redis_url, provider.base_url, rpm=KEY_RPM, groups={"cheap": {"model": "openai/cheap-model"}}
        )
        await run_all(settings, jobs(JOBS, llm_config="cheap") + jobs(JOBS, model="openai/other-model"))
        stats = provider.stats()
    assert stats["rate_limited"] <= 2, stats["rate_limited"]
    limiter = RateLimiter(redis)
    for scope in ("openai/cheap-model", "openai/other-model"):
        state = await limiter.inspect(scope)
        assert (state.source, state.rpm) == ("configured", KEY_RPM)
        assert state.requests_last_minute >= JOBS


async def test_with_no_limit_configured_the_providers_headers_set_it(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    provider_config = ProviderConfig(api_key=TEST_API_KEY, rpm=KEY_RPM, latency=0.05)
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(redis_url, provider.base_url)
        elapsed = await run_all(settings, jobs(JOBS, model="openai/gpt-4o-mini"))
        stats = provider.stats()
    # Jobs claimed together are admitted together while the first answers are on their way: the start
    # overshoots by up to about one bucket (issue 11 leaves this open); the rest runs at the key's rate.
    assert stats["rate_limited"] <= 2 * KEY_RPM / 60, stats["rate_limited"]
    assert elapsed >= (JOBS - KEY_RPM / 60) / (KEY_RPM / 60) * 0.9  # at the key's rate, not faster
    state = await RateLimiter(redis).inspect("openai/gpt-4o-mini")
    assert (state.state, state.source, state.rpm) == ("limited", "learnt", KEY_RPM)
    assert "unlimited" not in caplog.text


async def test_a_provider_stating_no_limit_leaves_the_scope_unlimited_with_a_warning(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    provider_config = ProviderConfig(api_key=TEST_API_KEY, latency=0.05, rate_limit_headers="none")
    caplog.set_level(logging.WARNING, logger="llmqueue.limits")
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(redis_url, provider.base_url)
        await run_all(settings, jobs(20, model="openai/gpt-4o-mini"))
    state = await RateLimiter(redis).inspect("openai/gpt-4o-mini")
    assert (state.state, state.source) == ("unlimited", "none")
    warnings = [r.getMessage() for r in caplog.records if "runs unlimited" in r.getMessage()]
    assert len(warnings) == 1 and "'openai/gpt-4o-mini'" in warnings[0]


async def test_a_configured_limit_above_the_providers_gives_way_with_a_warning(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    provider_config = ProviderConfig(api_key=TEST_API_KEY, rpm=KEY_RPM, latency=0.05)
    caplog.set_level(logging.WARNING, logger="llmqueue.limits")
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(redis_url, provider.base_url, rpm=4 * KEY_RPM)
        elapsed = await run_all(settings, jobs(JOBS, model="openai/gpt-4o-mini"))
        stats = provider.stats()
    # Until the provider first answers, two calls go (a probe), not the configured bucket's 40: the
    # answer's headers set the key's 10 a second before the rest leave. Then the run is paced at the
    # provider's rate (0 or 1 refused in 20 runs: the provider's window and ours meet at an edge).
    assert stats["rate_limited"] <= 3, stats["rate_limited"]
    assert elapsed >= (JOBS - 4 * KEY_RPM / 60) / (KEY_RPM / 60) * 0.9
    state = await RateLimiter(redis).inspect("openai/gpt-4o-mini")
    assert (state.source, state.rpm, state.configured_rpm) == ("both", KEY_RPM, 4 * KEY_RPM)
    assert any("above the provider's own limit" in r.getMessage() for r in caplog.records)
    # No other client takes from the key, and none is reported (measured at most 0.014 in 20 runs).
    assert state.others_request_share <= 0.05, state.others_request_share


async def test_a_second_client_eating_half_the_key_slows_the_workers_instead_of_429s(
    redis_url: str, redis: Redis
) -> None:
    provider_config = ProviderConfig(api_key=TEST_API_KEY, rpm=KEY_RPM, latency=0.05, other_client_share=0.5)
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(redis_url, provider.base_url, rpm=KEY_RPM)
        elapsed = await run_all(settings, jobs(JOBS, model="openai/gpt-4o-mini"))
        stats = provider.stats()
    # Half the key is left: 5 a second. Without the headers nothing would tell the workers, and they
    # would keep sending 10 a second; learning what is left costs some 429s at the start.
    assert stats["rate_limited"] <= 0.35 * JOBS, stats["rate_limited"]
    assert elapsed >= 0.8 * JOBS / (KEY_RPM / 60 / 2)
    # What the headers showed the other client taking, as `llmqueue limits` reports it: an estimate
    # that counts the calls voided by its 429s as sent, so it falls short of the 0.5 it takes.
    state = await RateLimiter(redis).inspect("openai/gpt-4o-mini")
    assert state.others_request_share > 0.1


async def test_anthropic_input_and_output_limits_are_learnt_apart_and_run_at_the_input_rate(
    redis_url: str, redis: Redis
) -> None:
    # Anthropic's way: 60,000 input tokens a minute (1,000 a second) and 12,000 output tokens (200 a
    # second), no combined limit; its "tokens" headers state whichever has fewer tokens left.
    provider_config = ProviderConfig(
        api_key=TEST_API_KEY,
        itpm=60_000,
        otpm=12_000,
        latency=0.05,
        completion_tokens=16,
        rate_limit_headers="anthropic",
    )
    prompt = "Grade this answer to the question about the capital of France, please. " * 5  # ~90 tokens
    job_list = [
        {
            "model": "openai/claude-sim",
            "params": {"max_tokens": 20},
            "messages": [{"role": "user", "content": f"{n} {prompt}"}],
        }
        for n in range(JOBS)
    ]
    with ProviderProcess(provider_config) as provider:
        settings = settings_for(redis_url, provider.base_url)
        elapsed = await run_all(settings, job_list)
        stats = provider.stats()
    state = await RateLimiter(redis).inspect("openai/claude-sim")
    assert (state.state, state.source, state.itpm, state.otpm, state.tpm) == (
        "limited",
        "learnt",
        60_000,
        12_000,
        0,
    )
    # About 10 calls a second by input (~95 tokens each), 12 by output (16 produced of 20 asked): the
    # run goes at the input rate (6.0 s measured). Taking "tokens" (12,000) as a combined limit of
    # prompt + max_tokens allows about 1.7 calls a second: the limiter before itpm/otpm took 32 s.
    assert elapsed <= 20, elapsed
    assert elapsed >= 0.8 * (JOBS - 10) / 10.5, elapsed
    # 3 to 8 of the 60 calls drew a 429 in twelve runs on 2026-12-02 (the code before that day's changes
    # too): one in the steady state, then several at once as its cooldown ends. Learnt wrongly (the
    # combined "tokens" taken for a limit) the run fails the time bound above; with nothing learnt,
    # most of the 60 calls go in the first second and are refused.
    assert stats["rate_limited"] <= 10, stats["rate_limited"]
