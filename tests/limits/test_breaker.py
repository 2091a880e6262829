"""The circuit breaker: which failures take a deployment out, for how long, and what routing then sees."""

import asyncio

import pytest
from redis.asyncio import Redis as AsyncRedis

from llmqueue import keys
from llmqueue.limits.breaker import CircuitBreaker
from llmqueue.limits.limiter import RateLimiter
from llmqueue.model_list import RouterSettings

SETTINGS = RouterSettings(allowed_fails=3, cooldown_time=5, max_cooldown_time=20)


@pytest.fixture
def breaker(fake_redis: AsyncRedis) -> CircuitBreaker:
    return CircuitBreaker(fake_redis, RateLimiter(fake_redis), SETTINGS)


@pytest.mark.parametrize("kind", ["connection", "auth", "not_found"])
async def test_a_connection_error_401_or_404_takes_the_deployment_out_at_once(
    breaker: CircuitBreaker, fake_redis: AsyncRedis, kind: str
) -> None:
    assert await breaker.record_failure("eu", kind) is True

    [state] = await breaker.down(["eu"])
    assert state is not None and state.reason == kind
    assert 4.5 < state.remaining <= 5.0
    # The limiter's scope is paused as long: routing's wait for this deployment includes it.
    assert 4.5 < await RateLimiter(fake_redis).cooldown("eu", 0) <= 5.0
    # Taken out is not rate limited: the scope's last-minute 429 count stays at zero.
    assert (await RateLimiter(fake_redis).inspect("eu")).rate_limited_last_minute == 0


async def test_server_errors_take_it_out_only_after_allowed_fails(breaker: CircuitBreaker) -> None:
    opened = [await breaker.record_failure("eu", "server_error") for _ in range(3)]

    assert opened == [False, False, True]
    assert (await breaker.down(["eu"]))[0] is not None


@pytest.mark.parametrize("kind", ["rate_limit", "bad_request", "context_window_exceeded", "content_policy"])
async def test_a_429_or_a_fault_of_the_request_does_not_count(breaker: CircuitBreaker, kind: str) -> None:
    assert not CircuitBreaker.is_deployment_fault(kind)
    for _ in range(5):
        assert await breaker.record_failure("eu", kind) is False

    assert await breaker.down(["eu"]) == [None]


async def test_only_the_failing_deployment_is_out(breaker: CircuitBreaker, fake_redis: AsyncRedis) -> None:
    await breaker.record_failure("eu", "connection")

    eu, us = await breaker.down(["eu", "us"])

    assert eu is not None and us is None
    assert await RateLimiter(fake_redis).cooldown("us", 0) == 0


async def test_failures_counted_after_it_was_opened_start_again_from_zero(
    breaker: CircuitBreaker, fake_redis: AsyncRedis
) -> None:
    for _ in range(3):
        await breaker.record_failure("eu", "timeout")

    assert await fake_redis.get(keys.breaker_failures("eu")) is None


async def test_failing_again_right_after_coming_back_doubles_the_pause(
    fake_redis: AsyncRedis,
) -> None:
    short = RouterSettings(allowed_fails=1, cooldown_time=0.2, max_cooldown_time=20)
    breaker = CircuitBreaker(fake_redis, RateLimiter(fake_redis), short)
    await breaker.record_failure("eu", "connection")

    await asyncio.sleep(0.3)
    assert await breaker.down(["eu"]) == [None]  # back in service

    await breaker.record_failure("eu", "connection")

    [state] = await breaker.down(["eu"])
    assert state is not None and 0.3 < state.remaining <= 0.41
