"""The cache on the worker's path: a real Redis, an in-process worker and the simulated provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmqueue.batches.control import Batches
from llmqueue.batches.files import write_results
from llmqueue.producer import Producer
from llmqueue.queue.ledger import BatchStatus
from llmqueue.settings import CacheConfig, Settings
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

WAIT = 20.0
REVIEWS = ["the soup was cold", "lovely staff", "never again", "best pizza in town", "too loud"]


def review_lines(reviews: list[str], *, temperature: float = 0.0) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"review-{n}",
            "model": "openai/gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Answer positive or negative."},
                {"role": "user", "content": text},
            ],
            "temperature": temperature,
            "max_tokens": 3,
        }
        for n, text in enumerate(reviews)
    ]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


async def run_file(batches: Batches, path: Path, batch_id: str, **options: Any) -> BatchStatus:
    await batches.submit_file(path, batch_id, **options)
    return await asyncio.wait_for(batches.wait(batch_id, interval=0.02), WAIT)


@pytest.fixture
async def slow_provider() -> AsyncIterator[RunningProvider]:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, latency=0.4)) as running:
        yield running


@pytest.fixture
def batches(producer: Producer) -> Batches:
    return Batches(producer.store)


async def test_a_file_run_again_is_answered_from_the_cache_without_provider_calls(
    settings: Settings, provider: RunningProvider, batches: Batches, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "reviews.jsonl", review_lines(REVIEWS))
    async with running_worker(settings):
        first = await run_file(batches, path, "first")
        assert provider.stats.requests == 5
        assert (first.succeeded, first.cached) == (5, 0)
        second = await run_file(batches, path, "second")
    assert provider.stats.requests == 5
    assert (second.succeeded, second.cached, second.requests, second.tokens, second.cost) == (5, 5, 0, 0, 0.0)
    out = tmp_path / "out.jsonl"
    await write_results(batches.results("second"), out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in records] == [f"review-{n}" for n in range(5)]
    assert all(r["llmqueue"]["cached"] is True and r["llmqueue"]["cost"] == 0.0 for r in records)
    assert all(r["llmqueue"]["attempts"] == 0 and r["error"] is None for r in records)
    firsts = [json.loads(line) for line in (await _results_text(batches, "first", tmp_path)).splitlines()]
    assert [r["response"]["body"] for r in records] == [r["response"]["body"] for r in firsts]
    assert not any(r["llmqueue"]["cached"] for r in firsts)


async def _results_text(batches: Batches, batch_id: str, tmp_path: Path) -> str:
    out = tmp_path / f"{batch_id}.jsonl"
    await write_results(batches.results(batch_id), out)
    return out.read_text()


async def test_one_changed_prompt_or_parameter_makes_exactly_one_call_each(
    settings: Settings, provider: RunningProvider, batches: Batches, tmp_path: Path
) -> None:
    async with running_worker(settings):
        await run_file(batches, write_lines(tmp_path / "a.jsonl", review_lines(REVIEWS)), "a")
        edited = REVIEWS.copy()
        edited[2] = "never again, truly awful"
        changed = await run_file(batches, write_lines(tmp_path / "b.jsonl", review_lines(edited)), "b")
        assert provider.stats.requests == 6
        assert (changed.cached, changed.requests) == (4, 1)
        warmer = await run_file(
            batches, write_lines(tmp_path / "c.jsonl", review_lines(REVIEWS, temperature=0.5)), "c"
        )
    assert (warmer.cached, warmer.requests) == (0, 5)


async def test_no_cache_makes_every_call_and_stores_nothing(
    settings: Settings, provider: RunningProvider, batches: Batches, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "reviews.jsonl", review_lines(REVIEWS))
    async with running_worker(settings):
        await run_file(batches, path, "a", cache=False)
        second = await run_file(batches, path, "b")
    assert provider.stats.requests == 10
    assert second.cached == 0


async def test_a_failed_call_is_not_cached(
    settings: Settings, provider: RunningProvider, batches: Batches, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "one.jsonl", review_lines(REVIEWS[:1]))
    provider.fail_next(1, 400, message="Invalid value for 'temperature'.")
    async with running_worker(settings):
        first = await run_file(batches, path, "a")
        assert first.failed == 1
        second = await run_file(batches, path, "b")
        third = await run_file(batches, path, "c")
    assert (second.succeeded, second.cached, second.requests) == (1, 0, 1)
    assert (third.succeeded, third.cached, third.requests) == (1, 1, 0)
    assert provider.stats.requests == 2


async def test_identical_lines_in_flight_together_make_one_call(
    redis_url: str, slow_provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, slow_provider.base_url)
    path = write_lines(tmp_path / "same.jsonl", review_lines(["the soup was cold"] * 12))
    async with Producer(settings) as producer, running_worker(settings):
        status = await run_file(Batches(producer.store), path, "same")
    assert slow_provider.stats.requests == 1
    assert (status.succeeded, status.cached, status.requests) == (12, 11, 1)


async def test_single_jobs_are_cached_only_when_they_ask(
    settings: Settings, provider: RunningProvider, producer: Producer
) -> None:
    job = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "2+2?"}]}
    async with running_worker(settings):
        for _ in range(2):
            result = await (await producer.submit(job)).result(timeout=WAIT)
            assert result.ok and not result.cached
        assert provider.stats.requests == 2
        asked = [await (await producer.submit({**job, "cache": True})).result(timeout=WAIT) for _ in range(2)]
    assert provider.stats.requests == 3
    assert [r.cached for r in asked] == [False, True]
    assert asked[1].text == asked[0].text and asked[1].cost == 0.0 and asked[1].usage is None


async def test_a_worker_with_the_cache_turned_off_calls_every_time(
    redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url)
    settings.cache = CacheConfig(enabled=False)
    path = write_lines(tmp_path / "reviews.jsonl", review_lines(REVIEWS[:2]))
    async with Producer(settings) as producer, running_worker(settings):
        batches = Batches(producer.store)
        await run_file(batches, path, "a")
        second = await run_file(batches, path, "b")
    assert provider.stats.requests == 4
    assert second.cached == 0


async def test_the_redis_backend_serves_hits_from_the_queue_redis(
    redis_url: str, provider: RunningProvider, tmp_path: Path, private_cache_dir: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url)
    settings.cache = CacheConfig(backend="redis")
    path = write_lines(tmp_path / "reviews.jsonl", review_lines(REVIEWS[:3]))
    async with Producer(settings) as producer, running_worker(settings):
        batches = Batches(producer.store)
        await run_file(batches, path, "a")
        second = await run_file(batches, path, "b")
        assert await producer.redis.zcard("llmqueue:cache-index") == 3
    assert (provider.stats.requests, second.cached) == (3, 3)
    assert not private_cache_dir.exists()
