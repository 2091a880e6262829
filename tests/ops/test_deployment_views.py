"""Where deployments show: a batch's split by deployment (status), and the per-deployment metric."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import fakeredis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from rich.console import Console
from typer.testing import CliRunner

from llmqueue import keys
from llmqueue.batches.display import deployment_split, status_table
from llmqueue.cli import app
from llmqueue.limits.breaker import CircuitBreaker
from llmqueue.limits.limiter import RateLimiter
from llmqueue.model_list import RouterSettings
from llmqueue.ops.events import JobEvent
from llmqueue.ops.metrics import WorkerMetrics
from llmqueue.queue.ledger import BatchLedger
from llmqueue.settings import LimitConfig


async def test_batch_status_counts_calls_per_deployment_by_outcome(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    ledger = BatchLedger(fake_redis)
    await fake_redis.hset(keys.batch("tickets"), mapping={"total": 5, "created_at": 1.0})
    for name, outcome in [
        ("eu", "ok"),
        ("eu", "ok"),
        ("eu", "rate_limit"),
        ("us", "ok"),
        ("us", "connection"),
    ]:
        await ledger.count_deployment_call("tickets", name, outcome)

    status = await ledger.status("tickets")

    assert status.deployments == {"eu": {"ok": 2, "rate_limit": 1}, "us": {"connection": 1, "ok": 1}}
    assert status.to_json()["deployments"]["us"] == {"connection": 1, "ok": 1}


async def test_a_batch_without_deployments_shows_no_split(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    await fake_redis.hset(keys.batch("plain"), mapping={"total": 1, "created_at": 1.0})

    status = await BatchLedger(fake_redis).status("plain")

    assert status.deployments == {}


def test_status_table_has_a_row_per_deployment_with_its_share() -> None:
    every = {"eu": {"ok": 6, "rate_limit": 2}, "us": {"ok": 8}}

    assert deployment_split(every["eu"], every) == "8 calls (50%): 6 answered, 2 rate_limit"
    assert deployment_split(every["us"], every) == "8 calls (50%): 8 answered"


async def test_status_table_renders_the_split(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    ledger = BatchLedger(fake_redis)
    await fake_redis.hset(keys.batch("b"), mapping={"total": 2, "created_at": 1.0})
    await ledger.count_deployment_call("b", "gpt-4o#0", "ok")
    await ledger.count_deployment_call("b", "openai-main", "ok")
    console = Console(width=120, record=True)

    console.print(status_table(await ledger.status("b")))

    text = console.export_text()
    assert "gpt-4o#0" in text and "openai-main" in text and "1 calls (50%)" in text


def test_metrics_count_calls_per_deployment_and_outcome() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    events = [
        JobEvent("started", "j1", model="gpt-4o", deployment="eu"),
        JobEvent("succeeded", "j1", model="gpt-4o", deployment="eu", latency=0.3),
        JobEvent("started", "j2", model="gpt-4o", deployment="us"),
        JobEvent("rerouted", "j2", model="gpt-4o", deployment="us", reason="connection", latency=0.01),
        JobEvent("started", "j2", model="gpt-4o", deployment="eu"),
        JobEvent("retrying", "j2", model="gpt-4o", deployment="eu", reason="rate_limit", status_code=429),
        JobEvent("succeeded", "j3", model="openai/gpt-4o"),
    ]
    for event in events:
        metrics(event)

    def value(deployment: str, outcome: str) -> float | None:
        return metrics.registry.get_sample_value(
            "llmqueue_deployment_calls_total",
            {"model": "gpt-4o", "deployment": deployment, "outcome": outcome},
        )

    assert value("eu", "ok") == 1
    assert value("us", "rerouted") == 1
    assert value("eu", "rate_limit") == 1
    assert metrics.registry.get_sample_value("llmqueue_in_flight", {"model": "gpt-4o"}) == 0


async def _two_deployments_batch(redis_url: str) -> None:
    """A batch whose calls went to eu and us; us then taken out by a refused connection."""
    redis = Redis.from_url(redis_url)
    try:
        ledger = BatchLedger(redis)
        await redis.hset(keys.batch("tickets"), mapping={"total": 4, "created_at": 1.0})
        for name, outcome in [("eu", "ok"), ("eu", "ok"), ("us", "ok"), ("us", "connection")]:
            await ledger.count_deployment_call("tickets", name, outcome)
        limiter = RateLimiter(redis)
        await CircuitBreaker(redis, limiter, RouterSettings(cooldown_time=30)).record_failure(
            "us", "connection"
        )
        await limiter.acquire([("eu", LimitConfig(rpm=600))], max_wait=1)
    finally:
        await redis.aclose()


def test_status_command_shows_each_deployments_split_and_state(redis_url: str) -> None:
    asyncio.run(_two_deployments_batch(redis_url))

    table = CliRunner().invoke(app, ["status", "tickets", "--redis-url", redis_url], env={"COLUMNS": "200"})
    data = json.loads(
        CliRunner().invoke(app, ["status", "tickets", "--json", "--redis-url", redis_url]).stdout
    )

    assert table.exit_code == 0, table.output
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert "2 calls (50%): 2 answered · in service, 600 rpm, 1 calls in the last minute" in lines["eu"]
    assert "1 answered, 1 connection · taken out for 30s (connection)" in lines["us"]
    assert data["deployments"] == {"eu": {"ok": 2}, "us": {"connection": 1, "ok": 1}}
    assert data["deployment_states"]["us"]["down"]["reason"] == "connection"
    assert data["deployment_states"]["eu"]["down"] is None


def test_limits_command_lists_each_deployment_of_the_model_list(redis_url: str, tmp_path: Path) -> None:
    asyncio.run(_two_deployments_batch(redis_url))
    config = tmp_path / "config.toml"
    config.write_text(
        "".join(
            f'[[model_list]]\nmodel_name = "gpt-4o"\nmodel_info = {{ id = "{name}" }}\n'
            f'litellm_params = {{ model = "openai/gpt-4o", api_key = "os.environ/{name.upper()}_KEY" }}\n\n'
            for name in ("eu", "us")
        ),
        encoding="utf-8",
    )

    out = CliRunner().invoke(
        app, ["limits", "--config", str(config), "--redis-url", redis_url], env={"COLUMNS": "200"}
    )

    assert out.exit_code == 0, out.output
    rows = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("│ ")}
    assert "gpt-4o" in rows["eu"] and "in service, 600 rpm" in rows["eu"]
    assert "taken out for 30s (connection)" in rows["us"]
