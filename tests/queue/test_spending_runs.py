"""Spending limits on real runs: two workers, two batches and agent steps (the Producer API) on the
simulated provider, checked against what the provider was paid for; held jobs run once a worker with
a raised limit starts; a batch's ``max_cost`` and the shared limits both apply; fallbacks count against
their own model's limit; a model without a price under a limit is refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue.batches.control import Batches
from llmqueue.model_list import parse_model_list
from llmqueue.producer import JobHandle, Producer
from llmqueue.queue.spend_report import read_spending
from llmqueue.queue.spending import HOLD_RECHECK
from llmqueue.settings import BudgetConfig, Settings, SpendLimit
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

pytestmark = pytest.mark.timeout(120)

PRICE = 1e-4
"""USD per prompt and per completion token of the simulated model in these tests."""
WORKER = {"max_jobs": 4}
"""Four calls in flight per worker at the most: two workers, eight."""


def priced(redis_url: str, base_url: str, budget: BudgetConfig, **llm: Any) -> Settings:
    settings = make_settings(
        redis_url,
        base_url,
        input_cost_per_token=PRICE,
        output_cost_per_token=PRICE,
        num_retries=0,
        worker=WORKER,
        **llm,
    )
    settings.budget = budget
    return settings


def paid(provider: RunningProvider) -> tuple[float, float]:
    """What the provider was paid for (its successful calls' tokens at the price), and the dearest call."""
    costs = [arrival.total_tokens * PRICE for arrival in provider.stats.arrivals]
    return sum(costs), max(costs, default=0.0)


def write_batch(path: Path, name: str, count: int, **extra: Any) -> Path:
    lines = (
        {
            "custom_id": f"{name}{n}",
            "messages": [{"role": "user", "content": f"{name} question {n}"}],
            **extra,
        }
        for n in range(count)
    )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


async def eventually(check: Callable[[], Any], *, within: float, what: str) -> Any:
    """Poll ``check`` (async) every 50 ms until it returns something true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def workers(*settings: Settings) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for each in settings:
            await stack.enter_async_context(running_worker(each))
        yield


async def settled(redis: Redis, waiting: int) -> dict[str, Any] | None:
    """The spending read once ``waiting`` jobs are held and no call is in flight; else None."""
    view = await read_spending(redis, time.time())
    if view["held"] == waiting and view["today"]["in_flight"] < 1e-9:
        return view
    return None


async def test_a_daily_limit_holds_across_workers_batches_and_agent_steps_then_a_raise_runs_the_rest(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    limit = 0.05  # ~25 tokens a call at $0.0001: ~20 calls of the 70
    # Calls of 0.3 s: the two workers' eight slots have calls in flight together when the limit is met.
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, latency=0.3)) as provider:
        settings = priced(redis_url, provider.base_url, BudgetConfig(daily=limit))
        async with Producer(settings) as producer:
            batches = Batches(producer.store, settings)
            # max_tokens 16: each call reserves ~$0.0026, so calls run side by side up to the limit (without
            # it, 1024 completion tokens are assumed: $0.10, above the limit, one call at a time).
            await batches.submit_file(write_batch(tmp_path / "one.jsonl", "one", 25, max_tokens=16), "one")
            await batches.submit_file(write_batch(tmp_path / "two.jsonl", "two", 25, max_tokens=16), "two")
            steps: list[JobHandle] = [
                await producer.submit(
                    {"messages": [{"role": "user", "content": f"step {n}"}], "params": {"max_tokens": 16}}
                )
                for n in range(20)
            ]
            async with workers(settings, settings):
                view = await eventually(
                    lambda: settled(redis, 70 - provider.stats.succeeded), within=60, what="the rest held"
                )
                spent, dearest = paid(provider)
                in_flight = provider.stats.max_in_flight
            one = await read_spending(redis, time.time(), batch_id="one")

            assert limit <= spent <= limit + in_flight * dearest, (spent, in_flight, dearest)
            assert 2 <= in_flight <= 8
            assert view["today"]["spent"] == pytest.approx(spent)
            assert view["today"]["reached"] and view["today"]["warning"]
            assert one["held"] > 0
            assert one["held_reasons"][0].startswith(
                "the daily spending limit for all models ($0.05) is reached: held until "
            )

            raised = priced(redis_url, provider.base_url, BudgetConfig(daily=1.0))
            began = time.monotonic()
            async with workers(raised):
                for name in ("one", "two"):
                    await eventually(
                        lambda name=name: _all_done(batches, name), within=30, what=f"batch {name} done"
                    )
                answers = [await step.result(timeout=30) for step in steps]
                took = time.monotonic() - began

    assert took < HOLD_RECHECK / 2  # woken by the new limits, not found by the next re-check
    assert [a.status for a in answers] == ["succeeded"] * 20
    assert provider.stats.succeeded == 70


async def _all_done(batches: Batches, name: str) -> bool:
    status = await batches.status(name)
    return status.done and status.succeeded == status.total


async def test_a_batch_max_cost_and_the_daily_limit_both_apply_and_the_tighter_holds(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, latency=0.02)) as provider:
        settings = priced(redis_url, provider.base_url, BudgetConfig(daily=0.05))
        async with Producer(settings) as producer:
            batches = Batches(producer.store, settings)
            # "tight": its own budget ($0.01) is below the day's; "loose": the day's limit is the tighter.
            await batches.submit_file(
                write_batch(tmp_path / "t.jsonl", "tight", 30, max_tokens=16), "tight", max_cost=0.01
            )
            await batches.submit_file(
                write_batch(tmp_path / "l.jsonl", "loose", 60, max_tokens=16), "loose", max_cost=1.0
            )
            async with workers(settings):
                tight = await eventually(lambda: _done(batches, "tight"), within=60, what="tight stopped")
                loose = await eventually(lambda: _loose_held(redis, batches), within=60, what="held")
                spent, dearest = paid(provider)
                in_flight = provider.stats.max_in_flight

    assert tight.cancelled > 0 and 0.01 <= tight.cost <= 0.01 + 4 * dearest  # its budget stopped it
    assert loose.cancelled == 0 and loose.cost < 1.0  # held by the day's limit, not cancelled
    assert 0.05 <= spent <= 0.05 + in_flight * dearest


async def _loose_held(redis: Redis, batches: Batches) -> Any:
    status = await batches.status("loose")
    return status if await settled(redis, status.total - status.succeeded) else None


async def _done(batches: Batches, name: str) -> Any:
    status = await batches.status(name)
    return status if status.done else None


async def test_a_fallbacks_calls_count_against_its_own_models_limit(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    async with (
        run_provider(ProviderConfig(api_key=TEST_API_KEY, error_rate=1.0)) as down,
        run_provider(ProviderConfig(api_key=TEST_API_KEY, latency=0.02)) as up,
    ):
        settings = priced(
            redis_url,
            up.base_url,
            BudgetConfig(models={"b": SpendLimit(daily=0.02), "a": SpendLimit(daily=5)}),
        )
        settings.model_list = parse_model_list(
            [
                {
                    "model_name": name,
                    "litellm_params": {
                        "model": "openai/sim-model",
                        "api_base": base,
                        "api_key": TEST_API_KEY,
                    },
                }
                for name, base in (("a", down.base_url), ("b", up.base_url))
            ],
            "test",
        )
        settings.fallbacks = {"a": ["b"]}
        async with Producer(settings) as producer:
            batches = Batches(producer.store, settings)
            await batches.submit_file(
                write_batch(tmp_path / "a.jsonl", "a", 30, model="a", max_tokens=16), "fb"
            )
            async with workers(settings):
                await eventually(lambda: settled(redis, 30 - up.stats.succeeded), within=60, what="held")
                view = await read_spending(redis, time.time())
                spent, dearest = paid(up)

    assert down.stats.succeeded == 0 and up.stats.succeeded < 30
    by_model = view["today"]["by_model"]
    assert by_model["b"]["spent"] == pytest.approx(spent) and by_model["b"]["reached"]
    assert by_model["a"]["spent"] == 0.0
    assert 0.02 <= spent <= 0.02 + 4 * dearest
    assert view["held_reasons"][0].startswith("the daily spending limit for b ($0.02) is reached")


async def test_a_model_without_a_price_under_a_limit_fails_with_a_clear_error_and_no_call(
    redis_url: str,
) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        settings = make_settings(redis_url, provider.base_url, model="openai/my-finetune-xyz")
        settings.budget = BudgetConfig(daily=1.0)
        async with Producer(settings) as producer, workers(settings):
            handle = await producer.submit({"messages": [{"role": "user", "content": "hi"}]})
            result = await handle.result(timeout=30)

    assert result.status == "failed"
    message = result.errors[-1].message
    assert "'openai/my-finetune-xyz'" in message and "input_cost_per_token" in message
    assert provider.stats.requests == 0
