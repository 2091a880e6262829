"""How limits are shown: ``llmqueue limits``, ``llmqueue status BATCH``, the worker's limit gauges."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue.cli import app
from llmqueue.limits.headers import ProviderLimits, Reading
from llmqueue.limits.limiter import RateLimiter
from llmqueue.limits.view import ScopeState, note_batch_scope
from llmqueue.ops.metrics import WorkerMetrics
from llmqueue.settings import LimitConfig
from tests.support.cli import runner

pytestmark = pytest.mark.usefixtures("clean_environment")


async def _three_scopes(redis_url: str) -> None:
    """A configured scope the provider lowered, a learnt one, an unlimited one; two ran in batch b1."""
    redis = Redis.from_url(redis_url)
    limiter = RateLimiter(redis)
    configured = LimitConfig(rpm=1200)
    admission = await limiter.acquire([("openai/gpt-4o", configured)], max_wait=1)
    said = ProviderLimits("openai", requests=Reading(limit=600, remaining=9))
    assert admission.reservation is not None
    await admission.reservation.answered(said, {})
    await limiter.cooldown("openai/gpt-4o", 30)
    claude = await limiter.acquire([("anthropic/claude", None)], max_wait=1)
    learnt = ProviderLimits("anthropic", requests=Reading(50, 49), tokens=Reading(40000, 39000))
    assert claude.reservation is not None
    await claude.reservation.answered(learnt, {})
    llama = await limiter.acquire([("local/llama", None)], max_wait=1)
    assert llama.reservation is not None
    await llama.reservation.answered(None, {})
    await note_batch_scope(redis, "b1", "openai/gpt-4o")
    await note_batch_scope(redis, "b1", "local/llama")
    await redis.aclose()


def test_limits_json_lists_every_scope_with_its_source(redis_url: str) -> None:
    asyncio.run(_three_scopes(redis_url))
    result = runner.invoke(app, ["limits", "--json", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    scopes = {entry["scope"]: entry for entry in json.loads(result.stdout)}
    assert set(scopes) == {"openai/gpt-4o", "anthropic/claude", "local/llama"}
    gpt = scopes["openai/gpt-4o"]
    assert (gpt["source"], gpt["rpm"], gpt["configured_rpm"], gpt["learnt_rpm"]) == ("both", 600, 1200, 600)
    assert gpt["cooldown"] > 25 and gpt["rate_limited_last_minute"] == 1 and gpt["requests_last_minute"] == 1
    claude = scopes["anthropic/claude"]
    assert (claude["source"], claude["rpm"], claude["tpm"], claude["state"]) == (
        "learnt",
        50,
        40000,
        "limited",
    )
    assert (scopes["local/llama"]["state"], scopes["local/llama"]["source"]) == ("unlimited", "none")


def test_limits_table_says_unlimited(redis_url: str) -> None:
    asyncio.run(_three_scopes(redis_url))
    result = runner.invoke(app, ["limits", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 2}
    assert "unlimited" in rows["local/llama"]
    assert "600 rpm" in rows["openai/gpt-4o"] and "both" in rows["openai/gpt-4o"]
    assert "50 rpm, 40000 tpm" in rows["anthropic/claude"] and "learnt" in rows["anthropic/claude"]


def test_limits_show_the_share_another_client_was_seen_to_take(redis_url: str) -> None:
    async def shortfall() -> None:
        redis = Redis.from_url(redis_url)
        limiter = RateLimiter(redis)
        limit = LimitConfig(rpm=600, spread_seconds=0)
        for left in (9, 0):  # between two calls the provider lost 9 where we sent 1: others took 8
            admission = await limiter.acquire([("openai/gpt-4o", limit)], max_wait=1)
            said = ProviderLimits("openai", requests=Reading(limit=600, remaining=left))
            assert admission.reservation is not None
            await admission.reservation.answered(said, {})
        await redis.aclose()

    asyncio.run(shortfall())
    listed = runner.invoke(app, ["limits", "--json", "--redis-url", redis_url])
    (entry,) = json.loads(listed.stdout)
    # 8 requests over the 5 s the estimate counts at least (it watched less), of the key's 50.
    assert entry["others_request_share"] == pytest.approx(0.16, abs=0.01)
    table = runner.invoke(app, ["limits", "--redis-url", redis_url])
    shown = re.search(r"others took (\d+)% of req", table.stdout)
    assert shown is not None, table.stdout
    # Read a moment after the JSON: the share has decayed a little since (over 10 s), never risen.
    read_first = entry["others_request_share"] * 100
    assert read_first - 2 <= int(shown.group(1)) <= read_first + 0.5


def test_limits_show_input_and_output_limits_learnt_from_anthropic(redis_url: str) -> None:
    async def learn() -> None:
        redis = Redis.from_url(redis_url)
        limiter = RateLimiter(redis)
        admission = await limiter.acquire([("anthropic/claude", None)], max_wait=1)
        said = ProviderLimits(
            "anthropic",
            requests=Reading(50, 49),
            tokens=Reading(8000, 7000),
            input_tokens=Reading(40000, 39000),
            output_tokens=Reading(8000, 7000),
        )
        assert admission.reservation is not None
        await admission.reservation.answered(said, {})
        await redis.aclose()

    asyncio.run(learn())
    (entry,) = json.loads(runner.invoke(app, ["limits", "--json", "--redis-url", redis_url]).stdout)
    assert (entry["itpm"], entry["otpm"], entry["tpm"], entry["source"]) == (40000, 8000, 0, "learnt")
    table = runner.invoke(app, ["limits", "--redis-url", redis_url]).stdout
    assert "50 rpm, 40000 itpm, 8000 otpm" in table
    assert "39000/667 in" not in table and "/667 in" in table and "/133 out" in table


def test_limits_with_no_scope_in_use_says_so(redis_url: str) -> None:
    result = runner.invoke(app, ["limits", "--redis-url", redis_url])
    assert result.exit_code == 0 and "no limit scope in use" in result.stdout


def test_metrics_have_a_limit_and_level_gauge_per_scope_with_the_source() -> None:
    async def states() -> list:  # type: ignore[type-arg]
        import fakeredis

        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        limiter = RateLimiter(redis)
        first = await limiter.acquire([("m", LimitConfig(rpm=600))], max_wait=1)
        before = await limiter.inspect("m")
        said = ProviderLimits("openai", requests=Reading(limit=300, remaining=4))
        assert first.reservation is not None
        await first.reservation.answered(said, {})
        return [before, await limiter.inspect("m")]

    before, after = asyncio.run(states())
    metrics = WorkerMetrics()
    metrics.observe_limits(before)
    sample = metrics.registry.get_sample_value
    assert sample("llmqueue_limit", {"scope": "m", "kind": "requests", "source": "configured"}) == 600
    metrics.observe_limits(after)
    assert sample("llmqueue_limit", {"scope": "m", "kind": "requests", "source": "configured"}) is None
    assert sample("llmqueue_limit", {"scope": "m", "kind": "requests", "source": "both"}) == 300
    level = sample("llmqueue_limit_level", {"scope": "m", "kind": "requests"})
    assert level is not None and 3.5 < level < 5


def test_status_of_a_batch_shows_the_limits_its_jobs_run_under(redis_url: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}\n')
    submitted = runner.invoke(app, ["submit", str(source), "--batch", "b1", "--redis-url", redis_url])
    assert submitted.exit_code == 0, submitted.output
    asyncio.run(_three_scopes(redis_url))

    as_json = runner.invoke(app, ["status", "b1", "--json", "--redis-url", redis_url])
    assert as_json.exit_code == 0, as_json.output
    limits = json.loads(as_json.stdout)["limits"]
    assert [(s["scope"], s["state"]) for s in limits] == [
        ("local/llama", "unlimited"),
        ("openai/gpt-4o", "limited"),
    ]

    table = runner.invoke(app, ["status", "b1", "--redis-url", redis_url])
    assert "limits it runs under" in table.stdout and "openai/gpt-4o" in table.stdout
    assert "anthropic/claude" not in table.stdout


def test_metrics_have_input_and_output_gauges_where_a_scope_has_those_limits() -> None:
    async def state() -> ScopeState:
        import fakeredis

        limiter = RateLimiter(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
        await limiter.acquire(
            [("m", LimitConfig(itpm=600, otpm=8000, burst_seconds=60))],
            tokens=120,
            max_wait=1,
            input_tokens=100,
            output_tokens=20,
        )
        return await limiter.inspect("m")

    metrics = WorkerMetrics()
    metrics.observe_limits(asyncio.run(state()))
    sample = metrics.registry.get_sample_value
    assert sample("llmqueue_limit", {"scope": "m", "kind": "input_tokens", "source": "configured"}) == 600
    assert sample("llmqueue_limit", {"scope": "m", "kind": "output_tokens", "source": "configured"}) == 8000
    level = sample("llmqueue_limit_level", {"scope": "m", "kind": "input_tokens"})
    assert level is not None and 499 < level < 530  # 600 less the 100 taken, refilled 10 a second
