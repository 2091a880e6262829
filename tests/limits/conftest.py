"""Fixtures of the limiter's tests: the limiter on fakeredis and on a real Redis, with a clock the
test sets (the script then takes "now" from it instead of Redis ``TIME``), so waits are exact."""

import pytest
from redis.asyncio import Redis as AsyncRedis

from llmqueue.limits.limiter import RateLimiter
from tests.support.answered import AnsweredBefore
from tests.support.clock import Clock


@pytest.fixture(params=["fake", "real"])
def client(request: pytest.FixtureRequest) -> AsyncRedis:
    """fakeredis (Lua via lupa) or the real Redis: the limiter must behave the same on both."""
    return request.getfixturevalue("fake_redis" if request.param == "fake" else "redis")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(client: AsyncRedis, clock: Clock) -> RateLimiter:
    return AnsweredBefore(client, clock=clock)


@pytest.fixture
def woken(limiter: RateLimiter) -> list[tuple[str, float]]:
    """The parked jobs the limiter re-schedules, in order, as (job, seconds from now)."""
    found: list[tuple[str, float]] = []

    async def record(jobs: list[tuple[str, float]]) -> None:
        found.extend(jobs)

    limiter.on_wake = record
    return found
