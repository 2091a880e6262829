"""Jobs for a model_list name routed over two simulated providers, through real LiteLLM calls.

Each provider plays one deployment of ``gpt-4o`` with its own key; the keys reach the worker only as
``os.environ/`` references, read from its environment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue.limits.limiter import RateLimiter
from llmqueue.model_list import parse_model_list
from llmqueue.models import JobResult
from llmqueue.producer import Producer
from llmqueue.settings import LLMConfig, Settings, WorkerConfig
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.redis_dump import everything_in
from tests.support.settings import running_worker

EU_KEY = "sk-eu-deployment-7c1d9e2f4a"
US_KEY = "sk-us-deployment-5b8a3f6e0d"
MINI_KEY = "sk-mini-deployment-2e4f6a8c"
KEYS = {"EU_KEY": EU_KEY, "US_KEY": US_KEY, "MINI_KEY": MINI_KEY}


@dataclass
class Providers:
    eu: RunningProvider
    us: RunningProvider
    stack: AsyncExitStack

    async def stop_us(self) -> None:
        """Take the us provider off the network: its calls now fail to connect."""
        await self.stack.aclose()


@pytest.fixture
async def providers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Providers]:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    async with run_provider(ProviderConfig(api_key=EU_KEY, latency=0.02)) as eu:
        stack = AsyncExitStack()
        us = await stack.enter_async_context(run_provider(ProviderConfig(api_key=US_KEY, latency=0.02)))
        try:
            yield Providers(eu, us, stack)
        finally:
            await stack.aclose()


def routed_settings(redis_url: str, providers: Providers, *, rpm: float = 600, **llm: Any) -> Settings:
    entries: list[dict[str, Any]] = [
        {
            "model_name": "gpt-4o",
            "litellm_params": {
                "model": "openai/sim-model",
                "api_base": providers.eu.base_url,
                "api_key": "os.environ/EU_KEY",
                "rpm": rpm,
            },
            "model_info": {"id": "eu"},
        },
        {
            "model_name": "gpt-4o",
            "litellm_params": {
                "model": "openai/sim-model",
                "api_base": providers.us.base_url,
                "api_key": "os.environ/US_KEY",
                "rpm": rpm,
            },
            "model_info": {"id": "us"},
        },
    ]
    entries += llm.pop("extra_entries", [])
    fallbacks = llm.pop("fallbacks", {})
    return Settings(
        redis_url=redis_url,
        llm=LLMConfig(
            **{
                "model": "gpt-4o",
                "retry_min_wait": 0.1,
                "retry_max_wait": 0.4,
                "retry_multiplier": 0.1,
                "timeout": 10,
                **llm,
            }
        ),
        worker=WorkerConfig(poll_delay=0.01, warm_up=False),
        model_list=parse_model_list(entries, "test"),
        fallbacks=fallbacks,
    )


def chat(n: int) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": f"summarise ticket {n}"}]}


async def run_jobs(settings: Settings, count: int, timeout: float = 30) -> list[JobResult]:
    async with Producer(settings) as producer, running_worker(settings):
        handles = await producer.submit_many(chat(n) for n in range(count))
        return [await h.result(timeout=timeout) for h in handles]


async def test_jobs_for_a_model_name_are_spread_over_its_deployments(
    redis_url: str, providers: Providers
) -> None:
    # 60 RPM each with a 1 s bucket: one call a second per deployment, so one alone would take ~2x longer.
    settings = routed_settings(redis_url, providers, rpm=60)

    results = await run_jobs(settings, 8)

    assert all(r.status == "succeeded" and r.attempts == 1 for r in results)
    by = {name: sum(r.deployment == name for r in results) for name in ("eu", "us")}
    assert by["eu"] >= 3 and by["us"] >= 3, by
    assert providers.eu.stats.succeeded == by["eu"] and providers.us.stats.succeeded == by["us"]
    assert all(r.model == "gpt-4o" for r in results)


async def test_a_429_cools_down_only_that_deployment(
    redis_url: str, providers: Providers, redis: Redis
) -> None:
    # retry_max_wait above the provider's retry-after, so the pause is the 3 s it asks for.
    settings = routed_settings(redis_url, providers, retry_max_wait=6)
    providers.eu.rate_limit_for(3, retry_after=3)
    limiter = RateLimiter(redis)
    loop = asyncio.get_running_loop()

    async with Producer(settings) as producer, running_worker(settings):
        handles = await producer.submit_many(chat(n) for n in range(12))
        while providers.eu.stats.rate_limited == 0:
            await asyncio.sleep(0.005)
        refused_at = loop.time()
        # The worker records the pause once the 429 reaches it (later on a busy machine).
        while (eu_pause := await limiter.cooldown("eu", 0)) == 0 and loop.time() < refused_at + 1:
            await asyncio.sleep(0.01)
        paused_at = loop.time()
        us_pause = await limiter.cooldown("us", 0)
        results = [await h.result(timeout=30) for h in handles]

    assert 1.9 < eu_pause <= 3 and us_pause == 0
    assert all(r.status == "succeeded" for r in results)
    # While eu cooled down nothing was sent to it; us took the jobs, the refused ones included.
    assert not [t for t in providers.eu.stats.request_times if paused_at + 0.3 < t < paused_at + 2]
    assert providers.us.stats.rate_limited == 0
    assert providers.us.stats.succeeded >= 12 - providers.eu.stats.requests


async def test_a_deployment_going_down_mid_batch_leaves_its_jobs_to_the_other_without_spending_attempts(
    redis_url: str, providers: Providers
) -> None:
    settings = routed_settings(redis_url, providers, rpm=300)
    async with Producer(settings) as producer, running_worker(settings):
        handles = await producer.submit_many(chat(n) for n in range(40))
        while providers.us.stats.succeeded < 3:
            await asyncio.sleep(0.01)
        await providers.stop_us()
        results = [await h.result(timeout=30) for h in handles]

    assert all(r.status == "succeeded" for r in results), [r.errors for r in results if not r.ok]
    assert all(r.attempts == 1 and r.errors == [] for r in results), [r.errors for r in results if r.errors]
    on_us = sum(r.deployment == "us" for r in results)
    assert 3 <= on_us < 40
    assert sum(r.deployment == "eu" for r in results) == 40 - on_us


async def test_a_deployment_with_a_wrong_key_is_taken_out_and_its_jobs_go_to_the_other(
    redis_url: str, providers: Providers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("US_KEY", "sk-revoked-key-0000")
    settings = routed_settings(redis_url, providers)

    results = await run_jobs(settings, 10)

    assert all(r.status == "succeeded" and r.deployment == "eu" and r.attempts == 1 for r in results)
    assert providers.us.stats.errors.get(401, 0) >= 1


async def test_a_request_error_still_fails_the_job_at_once(redis_url: str, providers: Providers) -> None:
    settings = routed_settings(redis_url, providers)
    too_long = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000."
    providers.eu.fail_next(1, 400, message=too_long)
    providers.us.fail_next(1, 400, message=too_long)

    [result] = await run_jobs(settings, 1)

    assert result.status == "failed" and result.attempts == 1
    assert result.errors[0].kind == "context_window_exceeded"
    assert result.deployment in ("eu", "us")


async def test_when_every_deployment_is_down_retries_are_spent_as_usual(
    redis_url: str, providers: Providers
) -> None:
    settings = routed_settings(redis_url, providers, num_retries=1)
    providers.eu.fail_next(10, 503)
    providers.us.fail_next(10, 503)

    [result] = await run_jobs(settings, 1)

    assert result.status == "failed"
    assert result.attempts == 2 and [e.kind for e in result.errors] == ["server_error"] * 2


async def test_a_job_whose_retries_are_spent_falls_back_to_another_model_name(
    redis_url: str, providers: Providers
) -> None:
    async with run_provider(ProviderConfig(api_key=MINI_KEY)) as mini:
        mini_entry = {
            "model_name": "gpt-4o-mini",
            "litellm_params": {
                "model": "openai/sim-mini",
                "api_base": mini.base_url,
                "api_key": "os.environ/MINI_KEY",
            },
        }
        settings = routed_settings(
            redis_url,
            providers,
            num_retries=1,
            extra_entries=[mini_entry],
            fallbacks={"gpt-4o": ["gpt-4o-mini"]},
        )
        providers.eu.fail_next(10, 503)
        providers.us.fail_next(10, 503)

        [result] = await run_jobs(settings, 1)

    assert result.status == "succeeded"
    assert result.model == "gpt-4o-mini" and result.deployment == "gpt-4o-mini#2"
    assert result.attempts == 3 and [e.kind for e in result.errors] == ["server_error"] * 2
    assert mini.stats.succeeded == 1


async def test_without_fallbacks_spent_retries_fail_the_job(redis_url: str, providers: Providers) -> None:
    settings = routed_settings(redis_url, providers, num_retries=0)
    providers.eu.fail_next(10, 503)
    providers.us.fail_next(10, 503)

    [result] = await run_jobs(settings, 1)

    assert result.status == "failed" and result.attempts == 1


async def test_keys_never_reach_redis_results_or_logs(
    redis_url: str,
    providers: Providers,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("US_KEY", "sk-revoked-key-0000")  # a 401 whose error is logged and stored
    settings = routed_settings(redis_url, providers)
    providers.eu.fail_next(1, 500)

    with caplog.at_level(logging.DEBUG):
        results = await run_jobs(settings, 6)
        dump = await everything_in(redis)

    assert all(r.ok for r in results)
    secrets = [EU_KEY, "sk-revoked-key-0000"]
    for secret in secrets:
        assert secret not in dump
        assert secret not in caplog.text
        assert all(secret not in r.model_dump_json() for r in results)
    assert "rerouted" in caplog.text  # the 401 was logged, without the key
