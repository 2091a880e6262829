"""Priorities at the limiter: the reserve, short reservations below the default, higher waiters first.

Checked from the limiter's answers (reservations) on fakeredis and a real Redis; no time passes.
"""

import time

import pytest
from redis.asyncio import Redis as AsyncRedis

from llmqueue.limits.limiter import LOW_PRIORITY_HOLD, PRIORITIES, RateLimiter
from llmqueue.settings import LimitConfig
from tests.support.waits import assert_refilled_wait

BATCH, DEFAULT, INTERACTIVE = PRIORITIES["batch"], PRIORITIES["default"], PRIORITIES["interactive"]
# 10 requests a second, a bucket of 10 whose last 2 are the reserve.
TEN_PER_SECOND = LimitConfig(rpm=600, reserve=0.2, spread_seconds=0)
CLOSE = 0.05


@pytest.fixture(params=["fake", "real"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    client: AsyncRedis = request.getfixturevalue("fake_redis" if request.param == "fake" else "redis")
    return RateLimiter(client)


async def _take(
    limiter: RateLimiter, priority: int, *, max_wait: float = 2.0, tokens: int = 0
) -> float | None:
    """The wait of an admitted request, or None when it was refused."""
    admission = await limiter.acquire(
        "m", TEN_PER_SECOND, tokens=tokens, max_wait=max_wait, priority=priority
    )
    return admission.wait if admission.admitted else None


async def test_batch_jobs_leave_the_reserve_to_higher_priorities(limiter: RateLimiter) -> None:
    batch = [await _take(limiter, BATCH, max_wait=0) for _ in range(10)]
    assert batch == [0.0] * 8 + [None, None]
    # The two requests of the reserve go at once to a default and an interactive job.
    assert await _take(limiter, DEFAULT, max_wait=0) == 0.0
    assert await _take(limiter, INTERACTIVE, max_wait=0) == 0.0


async def test_default_jobs_may_take_the_whole_bucket(limiter: RateLimiter) -> None:
    assert [await _take(limiter, DEFAULT, max_wait=0) for _ in range(10)] == [0.0] * 10


async def test_batch_jobs_hold_no_reservation_longer_than_about_one_refill(limiter: RateLimiter) -> None:
    for _ in range(8):
        await _take(limiter, BATCH)
    # At the reserve line: the next batch job waits one refill (0.1 s), the one after would wait 0.2 s.
    assert await _take(limiter, BATCH) == pytest.approx(max(0.1, LOW_PRIORITY_HOLD), abs=CLOSE)
    assert await _take(limiter, BATCH) is None
    # A default job asking now waits behind one batch reservation only: 1 request left of the 2 reserved.
    assert await _take(limiter, DEFAULT, max_wait=0) == 0.0


async def test_default_jobs_may_reserve_up_to_their_max_wait(limiter: RateLimiter) -> None:
    start = time.monotonic()
    for _ in range(10):
        await _take(limiter, DEFAULT)
    for queued in range(1, 6):
        wait = await _take(limiter, DEFAULT)
        assert wait is not None
        assert_refilled_wait(wait, 0.1 * queued, since=start)


async def test_a_refused_higher_priority_job_is_admitted_before_lower_ones(limiter: RateLimiter) -> None:
    start = time.monotonic()
    for _ in range(10):
        await _take(limiter, DEFAULT)
    # An interactive job that will not wait 0.1 s is refused and told to come back then.
    refused = await limiter.acquire("m", TEN_PER_SECOND, tokens=0, max_wait=0, priority=INTERACTIVE)
    assert not refused.admitted
    assert_refilled_wait(refused.wait, 0.1, since=start)
    # Meanwhile default and batch jobs are refused until it is back, with room to spare.
    for lower in (DEFAULT, BATCH):
        later = await limiter.acquire("m", TEN_PER_SECOND, tokens=0, max_wait=2.0, priority=lower)
        assert not later.admitted
        assert later.wait > 0.1
    # Jobs of the same priority are not held back.
    same = await _take(limiter, INTERACTIVE)
    assert same is not None
    assert_refilled_wait(same, 0.1, since=start)


async def test_the_reserve_also_holds_for_tokens(limiter: RateLimiter) -> None:
    tokens = LimitConfig(tpm=60_000, reserve=0.1, spread_seconds=0)  # 1000 tokens a second, 100 reserved
    first = await limiter.acquire("t", tokens, tokens=900, max_wait=0, priority=BATCH)
    assert first.admitted
    refused = await limiter.acquire("t", tokens, tokens=50, max_wait=0, priority=BATCH)
    assert not refused.admitted
    assert (await limiter.acquire("t", tokens, tokens=100, max_wait=0, priority=DEFAULT)).admitted


@pytest.mark.parametrize("priority", [-1, 10])
async def test_a_priority_outside_0_to_9_is_an_error(limiter: RateLimiter, priority: int) -> None:
    with pytest.raises(ValueError, match="0 to 9"):
        await limiter.acquire("m", TEN_PER_SECOND, tokens=0, max_wait=0, priority=priority)
