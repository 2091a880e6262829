"""Spending limits shared through Redis: reservations against each limit, holds, settlement with the
real cost, warnings, the UTC periods and their rollover (an injected clock), and what status reads."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.worker import Retry
from redis.asyncio import Redis
from typer.testing import CliRunner

from llmqueue import keys
from llmqueue.cli import app
from llmqueue.ops.metrics import WorkerMetrics
from llmqueue.queue.spend_report import periods, read_spending
from llmqueue.queue.spending import HOLD_RECHECK, SpendGate, SpendReservation
from llmqueue.settings import BudgetConfig, SpendLimit
from tests.support.spending import nothing_to_wake, pay, pay_then_hold


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, text: str) -> None:
        self.now = at(text)

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("now", "day", "month", "day_ends", "month_ends"),
    [
        ("2026-12-06T07:52:00", "2026-12-06", "2026-12", "2026-12-07T00:00:00", "2027-01-01T00:00:00"),
        ("2026-12-31T23:59:59", "2026-12-31", "2026-12", "2027-01-01T00:00:00", "2027-01-01T00:00:00"),
        ("2027-02-28T12:00:00", "2027-02-28", "2027-02", "2027-03-01T00:00:00", "2027-03-01T00:00:00"),
        ("2028-02-28T12:00:00", "2028-02-28", "2028-02", "2028-02-29T00:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_periods_are_utc_days_and_months_ending_at_midnight(
    now: str, day: str, month: str, day_ends: str, month_ends: str
) -> None:
    found = periods(at(now))

    assert (found.day, found.month) == (day, month)
    assert (found.day_ends, found.month_ends) == (at(day_ends), at(month_ends))


def gate(redis: Redis, clock: Clock, **budget: Any) -> SpendGate:
    return SpendGate(redis, BudgetConfig(**budget), clock=clock)


async def test_calls_reserve_until_the_daily_limit_then_wait_for_those_in_flight(redis: Redis) -> None:
    spend = gate(redis, Clock("2026-12-06T10:00:00"), daily=1.0)

    first = await spend.reserve("a", None, "m", 0.4)
    second = await spend.reserve("b", None, "m", 0.4)
    third = await spend.reserve("c", None, "m", 0.4)

    assert isinstance(first, SpendReservation) and isinstance(second, SpendReservation)
    assert third[0] == "wait" and "calls in flight fill the daily spending limit for all models" in third[2]


async def test_a_limit_reached_holds_jobs_until_midnight_utc_rechecked_on_a_short_schedule(
    redis: Redis,
) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, daily=1.0)
    reservation = await spend.reserve("a", "b1", "m", 0.5)
    assert isinstance(reservation, SpendReservation)
    await spend.settle(reservation, 1.02)

    held = await spend.reserve("b", "b1", "m", 0.5)
    clock.now = at("2026-12-06T23:59:30")
    late = await spend.reserve("c", "b1", "m", 0.5)

    assert held == (
        "held",
        HOLD_RECHECK,
        "the daily spending limit for all models ($1) is reached: held until 2026-12-07 00:00 UTC "
        "or until the limit is raised",
    )
    assert late[0] == "held" and late[1] == pytest.approx(30.0)
    shown = await read_spending(redis, clock.now, batch_id="b1")
    assert shown["held"] == 2 and shown["held_reasons"] == [held[2]]


async def test_the_next_utc_day_starts_afresh_but_the_month_keeps_counting(redis: Redis) -> None:
    clock = Clock("2026-12-06T23:59:59")
    spend = gate(redis, clock, daily=1.0, monthly=1.5)
    reservation = await spend.reserve("a", None, "m", 0.5)
    assert isinstance(reservation, SpendReservation)
    await spend.settle(reservation, 1.0)
    assert (await spend.reserve("b", None, "m", 0.1))[0] == "held"

    clock.now = at("2026-12-07T00:00:00")
    next_day = await spend.reserve("b", None, "m", 0.1)
    assert isinstance(next_day, SpendReservation)
    await spend.settle(next_day, 0.6)
    month = await spend.reserve("c", None, "m", 0.1)

    assert month[0] == "held" and "monthly spending limit for all models ($1.5)" in month[2]
    assert "2027-01-01 00:00 UTC" in month[2]
    clock.now = at("2027-01-01T00:00:00")
    assert isinstance(await spend.reserve("c", None, "m", 0.1), SpendReservation)


async def test_a_model_limit_holds_that_model_only(redis: Redis) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, models={"big": SpendLimit(daily=0.5)})
    reservation = await spend.reserve("a", None, "big", 0.2)
    assert isinstance(reservation, SpendReservation)
    await spend.settle(reservation, 0.5)

    held = await spend.reserve("b", None, "big", 0.2)
    other = await spend.reserve("c", None, "small", 0.2)

    assert held[0] == "held" and "the daily spending limit for big ($0.5)" in held[2]
    assert isinstance(other, SpendReservation)
    assert spend.applies("big") and not spend.applies("small")


async def test_settling_gives_back_the_reservation_and_adds_the_real_cost(redis: Redis) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, daily=10.0, models={"m": SpendLimit(monthly=5.0)})
    reservation = await spend.reserve("a", None, "m", 0.3)
    assert isinstance(reservation, SpendReservation)
    during = await read_spending(redis, clock.now)
    await spend.settle(reservation, 0.125)
    after = await read_spending(redis, clock.now)

    assert during["today"]["in_flight"] == pytest.approx(0.3)
    assert after["today"]["spent"] == pytest.approx(0.125)
    assert after["today"]["in_flight"] == pytest.approx(0.0)
    assert after["month"]["by_model"]["m"]["spent"] == pytest.approx(0.125)


async def test_a_warning_is_logged_once_when_spend_passes_80_percent(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, daily=1.0)
    await spend.publish(nothing_to_wake)
    caplog.set_level(logging.WARNING, "llmqueue.spending")
    for cost in (0.5, 0.35, 0.1):
        await pay(spend, "m", cost)

    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "spending: all models spent $0.8500 of the daily limit of $1 (85%) in 2026-12-06 (UTC)"
    ]
    assert (await read_spending(redis, clock.now))["today"]["warning"] is True


async def test_a_held_job_raises_retry_and_says_why(redis: Redis) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, daily=1.0)
    await pay(spend, "m", 2.0)
    steps: list[tuple[Any, dict[str, Any]]] = []

    with pytest.raises(Retry):
        await spend.admit("b", None, "m", 0.1, lambda name, **details: steps.append((name, details)))

    assert steps[0][0] == "deferred" and steps[0][1]["reason"] == "spending_limit"


async def test_a_worker_with_other_limits_wakes_the_held_jobs(redis: Redis) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, daily=1.0)
    woken: list[list[tuple[str, float]]] = []

    async def wake(jobs: Any) -> None:
        woken.append(list(jobs))

    await spend.publish(wake)
    await pay(spend, "m", 1.0)
    assert (await spend.reserve("b", None, "m", 0.1))[0] == "held"
    await gate(redis, clock, daily=1.0).publish(wake)  # the same limits: nothing to wake
    await gate(redis, clock, daily=2.0).publish(wake)

    assert woken == [[("b", 0.0)]]
    shown = await read_spending(redis, clock.now)
    assert shown["today"]["limit"] == 2.0


async def test_held_jobs_that_ended_meanwhile_are_not_shown(redis: Redis) -> None:
    clock = Clock("2026-12-06T10:00:00")
    spend = gate(redis, clock, daily=1.0)
    await pay(spend, "m", 1.0)
    await spend.reserve("b", None, "m", 0.1)
    await redis.set(keys.result("b"), b"{}")

    assert (await read_spending(redis, clock.now))["held"] == 0
    assert await redis.hlen(keys.spend_held()) == 0


def test_a_model_without_a_price_under_a_limit_is_refused_and_named() -> None:
    spend = SpendGate(Redis(), BudgetConfig(daily=1.0))

    refused = spend.refusal("openai/my-finetune-xyz", "openai/my-finetune-xyz")

    assert refused is not None and "'openai/my-finetune-xyz'" in refused
    assert "input_cost_per_token" in refused
    assert spend.refusal("gpt-4o-mini", "gpt-4o-mini") is None


async def test_each_settled_call_sets_the_spend_gauges_of_its_limits(redis: Redis) -> None:
    metrics = WorkerMetrics()
    clock = Clock("2026-12-06T10:00:00")
    spend = SpendGate(
        redis,
        BudgetConfig(daily=1.0, models={"m": SpendLimit(monthly=2.0)}),
        clock=clock,
        listeners=[metrics],
    )
    await pay(spend, "m", 0.9)

    def sample(name: str, period: str, model: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"period": period, "model": model})

    assert sample("llmqueue_spend_usd", "day", "*") == pytest.approx(0.9)
    assert sample("llmqueue_spend_limit_usd", "day", "*") == 1.0
    assert sample("llmqueue_spend_warning", "day", "*") == 1
    assert sample("llmqueue_spend_usd", "month", "m") == pytest.approx(0.9)
    assert sample("llmqueue_spend_warning", "month", "m") == 0
    assert sample("llmqueue_spend_usd", "month", "*") is None  # no monthly limit for all models


def test_status_shows_spend_against_the_limits_and_why_jobs_are_held(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")

    async def hold_one() -> None:
        client = Redis.from_url(redis_url)
        spend = SpendGate(client, BudgetConfig(daily=1.0, models={"m": SpendLimit(daily=5.0)}))
        await pay_then_hold(spend, "m", 1.25, batch_id="b1")
        await client.aclose()

    asyncio.run(hold_one())
    table = CliRunner().invoke(app, ["status", "--redis-url", redis_url])
    shown = CliRunner().invoke(app, ["status", "--json", "--redis-url", redis_url])

    assert table.exit_code == 0, table.output
    assert re.search(r"all models[│ ]+\$1\.25[│ ]+-[│ ]+\$1\.00[│ ]+reached: jobs are held", table.stdout)
    assert re.search(r"│ m[│ ]+\$1\.25[│ ]+-[│ ]+\$5\.00[│ ]+25%", table.stdout)
    assert "daily spending limit for all models ($1) is reached" in table.stdout
    assert "1 job(s) held by a spending limit" in table.stdout
    data = json.loads(shown.stdout)["spending"]
    assert data["held"] == 1 and data["today"]["spent"] == pytest.approx(1.25)
