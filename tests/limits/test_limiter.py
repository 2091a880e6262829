"""The Redis token-bucket limiter: capacity, spacing, max_wait, token debt, adjust, cooldown, expiry.

Each behaviour runs on fakeredis and on a real Redis. Waits are checked from the limiter's answers
(reservations), so only the cooldown-expiry and refill tests let time pass. The concurrency tests
hammer one bucket from many connections and processes on the real Redis only.
"""

import asyncio
import itertools
import multiprocessing
import time
from multiprocessing.synchronize import Barrier

import pytest
from redis.asyncio import Redis as AsyncRedis

from llmqueue import keys
from llmqueue.limits.limiter import RateLimiter
from llmqueue.settings import LimitConfig
from tests.support.waits import assert_refilled_wait

# 1 request/s with room for 5 at once: waits are whole seconds, far above the time the calls take.
ONE_PER_SECOND = LimitConfig(rpm=60, burst_seconds=5, spread_seconds=0)
# 10 tokens/s with room for 100 at once.
TEN_TOKENS_PER_SECOND = LimitConfig(tpm=600, burst_seconds=10, spread_seconds=0)
CLOSE = 0.1  # seconds of slack for the time the calls themselves take


@pytest.fixture(params=["fake", "real"])
def client(request: pytest.FixtureRequest) -> AsyncRedis:
    """fakeredis (Lua via lupa) or the real Redis: the limiter must behave the same on both."""
    return request.getfixturevalue("fake_redis" if request.param == "fake" else "redis")


@pytest.fixture
def limiter(client: AsyncRedis) -> RateLimiter:
    return RateLimiter(client)


async def _acquire(
    limiter: RateLimiter,
    limit: LimitConfig | None,
    *,
    tokens: int = 0,
    max_wait: float = 3600.0,
    scope: str = "m",
) -> float:
    """Acquire, insist it was admitted, and return the wait (seconds) the caller must sleep."""
    admission = await limiter.acquire(scope, limit, tokens=tokens, max_wait=max_wait)
    assert admission.admitted, admission
    return admission.wait


async def _without_headers(limiter: RateLimiter, scope: str = "m") -> None:
    """What a worker does after a successful call whose answer states no limit: the scope is unlimited."""
    await limiter.observe(scope, None, None, None)


async def _redis_now(client: AsyncRedis) -> float:
    seconds, microseconds = await client.time()
    return seconds + microseconds / 1_000_000


# ---- request bucket ------------------------------------------------------------------------------


async def test_fresh_bucket_admits_capacity_at_once_then_spaces_requests(limiter: RateLimiter) -> None:
    burst = [await _acquire(limiter, ONE_PER_SECOND, max_wait=0) for _ in range(5)]
    assert burst == [0.0] * 5
    queued = [await _acquire(limiter, ONE_PER_SECOND) for _ in range(4)]
    assert queued == pytest.approx([1.0, 2.0, 3.0, 4.0], abs=CLOSE)
    gaps = [later - earlier for earlier, later in itertools.pairwise(queued)]
    assert gaps == pytest.approx([1.0] * 3, abs=0.02)


async def test_a_rate_below_one_per_burst_still_admits_one_request(limiter: RateLimiter) -> None:
    one_per_minute = LimitConfig(rpm=1, spread_seconds=0)  # capacity 1/60 of a request, raised to 1
    assert await _acquire(limiter, one_per_minute, max_wait=0) == 0.0
    assert await _acquire(limiter, one_per_minute) == pytest.approx(60.0, abs=CLOSE)


async def test_default_burst_of_one_second_caps_a_cold_start(limiter: RateLimiter) -> None:
    ten_per_second = LimitConfig(rpm=600, spread_seconds=0)
    start = time.monotonic()
    assert [await _acquire(limiter, ten_per_second, max_wait=0) for _ in range(10)] == [0.0] * 10
    eleventh = await limiter.acquire("m", ten_per_second, tokens=0, max_wait=0)
    assert not eleventh.admitted
    assert_refilled_wait(eleventh.wait, 0.1, since=start)

    thousand_tokens_per_second = LimitConfig(tpm=60_000, spread_seconds=0)
    start = time.monotonic()
    assert await _acquire(limiter, thousand_tokens_per_second, tokens=1000, max_wait=0, scope="t") == 0.0
    more = await limiter.acquire("t", thousand_tokens_per_second, tokens=100, max_wait=0)
    assert not more.admitted
    assert_refilled_wait(more.wait, 0.1, since=start)


# ---- max_wait ------------------------------------------------------------------------------------


async def test_request_that_would_wait_past_max_wait_is_refused_and_takes_nothing(
    limiter: RateLimiter,
) -> None:
    for _ in range(5):
        await _acquire(limiter, ONE_PER_SECOND)
    for _ in range(3):
        refused = await limiter.acquire("m", ONE_PER_SECOND, tokens=0, max_wait=0.5)
        assert not refused.admitted
        assert refused.wait == pytest.approx(1.0, abs=CLOSE)
    # The refusals reserved nothing: a patient caller gets the first free slot, not the fourth.
    assert await _acquire(limiter, ONE_PER_SECOND, max_wait=5) == pytest.approx(1.0, abs=CLOSE)
    assert await _acquire(limiter, ONE_PER_SECOND, max_wait=5) == pytest.approx(2.0, abs=CLOSE)


async def test_refused_token_request_takes_no_tokens(limiter: RateLimiter) -> None:
    await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=100)
    refused = await limiter.acquire("m", TEN_TOKENS_PER_SECOND, tokens=50, max_wait=1)
    assert not refused.admitted
    assert refused.wait == pytest.approx(5.0, abs=CLOSE)
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=50) == pytest.approx(5.0, abs=CLOSE)


# ---- token bucket --------------------------------------------------------------------------------


async def test_tokens_beyond_capacity_wait_for_the_refill(limiter: RateLimiter) -> None:
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=60, max_wait=0) == 0.0
    # 40 left, 60 wanted: 20 tokens at 10/s.
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=60) == pytest.approx(2.0, abs=CLOSE)
    # -20 left after the reservation, 60 wanted: 80 tokens.
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=60) == pytest.approx(8.0, abs=CLOSE)


async def test_cost_above_capacity_is_admitted_from_a_full_bucket_and_its_debt_delays_the_next(
    limiter: RateLimiter,
) -> None:
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=250, max_wait=0) == 0.0
    # -150 left, 10 wanted: 160 tokens at 10/s.
    refused = await limiter.acquire("m", TEN_TOKENS_PER_SECOND, tokens=10, max_wait=1)
    assert not refused.admitted
    assert refused.wait == pytest.approx(16.0, abs=CLOSE)
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=10) == pytest.approx(16.0, abs=CLOSE)


async def test_cost_above_capacity_waits_only_until_the_bucket_is_full(limiter: RateLimiter) -> None:
    await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=50)
    # Never "until 250 tokens fit" (a deadlock): until the 100-token bucket is full again.
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=250) == pytest.approx(5.0, abs=CLOSE)
    # 50 - 250 = -200 left, 10 wanted.
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=10) == pytest.approx(21.0, abs=CLOSE)


async def test_with_both_limits_the_binding_one_decides(limiter: RateLimiter) -> None:
    # 10 requests (1/s), 100 tokens (10/s)
    both = LimitConfig(rpm=60, tpm=600, burst_seconds=10, spread_seconds=0)

    assert await _acquire(limiter, both, tokens=100, scope="token-bound") == 0.0
    # 9 requests left, but 0 of the 50 tokens: 5 s.
    assert await _acquire(limiter, both, tokens=50, scope="token-bound") == pytest.approx(5.0, abs=CLOSE)

    for _ in range(10):
        assert await _acquire(limiter, both, tokens=1, scope="request-bound") == 0.0
    # 90 tokens left, but no request: 1 s.
    assert await _acquire(limiter, both, tokens=1, scope="request-bound") == pytest.approx(1.0, abs=CLOSE)


# ---- adjust --------------------------------------------------------------------------------------


async def test_adjust_refund_shortens_the_next_wait(limiter: RateLimiter) -> None:
    await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=100)
    await limiter.adjust("m", TEN_TOKENS_PER_SECOND, tokens=50)
    # 50 back, 60 wanted: 1 s instead of 6 s.
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=60) == pytest.approx(1.0, abs=CLOSE)


async def test_adjust_charge_lengthens_the_next_wait(limiter: RateLimiter) -> None:
    await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=100)
    await limiter.adjust("m", TEN_TOKENS_PER_SECOND, tokens=-50)
    # -50 left, 10 wanted: 6 s instead of 1 s.
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=10) == pytest.approx(6.0, abs=CLOSE)


async def test_adjust_never_fills_beyond_capacity(limiter: RateLimiter) -> None:
    await limiter.adjust("m", TEN_TOKENS_PER_SECOND, tokens=1000)
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=100, max_wait=0) == 0.0
    assert await _acquire(limiter, TEN_TOKENS_PER_SECOND, tokens=10) == pytest.approx(1.0, abs=CLOSE)


async def test_adjust_without_a_token_limit_writes_nothing(limiter: RateLimiter, client: AsyncRedis) -> None:
    await limiter.adjust("m", None, tokens=-1000)
    await limiter.adjust("m", ONE_PER_SECOND, tokens=-1000)
    assert not await client.exists(keys.limiter("m"))


# ---- cooldown ------------------------------------------------------------------------------------


async def test_cooldown_makes_every_caller_wait_even_without_a_limit(limiter: RateLimiter) -> None:
    await _without_headers(limiter)
    assert await limiter.cooldown("m", 5) == pytest.approx(5.0, abs=CLOSE)
    waits = [await _acquire(limiter, None, max_wait=10) for _ in range(3)]
    assert waits == pytest.approx([5.0] * 3, abs=CLOSE)
    refused = await limiter.acquire("m", None, tokens=0, max_wait=1)
    assert not refused.admitted
    assert refused.wait == pytest.approx(5.0, abs=CLOSE)


async def test_shorter_cooldown_does_not_shorten_the_current_one(limiter: RateLimiter) -> None:
    await _without_headers(limiter)
    await limiter.cooldown("m", 5)
    assert await limiter.cooldown("m", 1) == pytest.approx(5.0, abs=CLOSE)
    assert await _acquire(limiter, None) == pytest.approx(5.0, abs=CLOSE)
    assert await limiter.cooldown("m", 8) == pytest.approx(8.0, abs=CLOSE)
    assert await _acquire(limiter, None) == pytest.approx(8.0, abs=CLOSE)


async def test_cooldown_delays_callers_of_a_limited_scope(limiter: RateLimiter) -> None:
    assert await _acquire(limiter, ONE_PER_SECOND) == 0.0
    await limiter.cooldown("m", 2)
    # Four requests are left in the bucket: all four go when the cooldown ends.
    waits = [await _acquire(limiter, ONE_PER_SECOND) for _ in range(4)]
    assert waits == pytest.approx([2.0] * 4, abs=CLOSE)


async def test_cooldown_ends(limiter: RateLimiter) -> None:
    await _without_headers(limiter)
    await limiter.cooldown("m", 0.2)
    await asyncio.sleep(0.25)
    assert await _acquire(limiter, None, max_wait=0) == 0.0


async def test_cooldown_on_a_fresh_scope_leaves_its_buckets_full(limiter: RateLimiter) -> None:
    await limiter.cooldown("m", 2)
    # Five requests fit in the bucket: all go when the cooldown ends.
    waits = [await _acquire(limiter, ONE_PER_SECOND) for _ in range(5)]
    assert waits == pytest.approx([2.0] * 5, abs=CLOSE)


async def test_cooldown_keeps_the_refill_accrued_before_it(limiter: RateLimiter) -> None:
    ten_per_second = LimitConfig(rpm=600, spread_seconds=0)
    for _ in range(10):
        await _acquire(limiter, ten_per_second)
    await asyncio.sleep(0.3)  # about 3 requests refill
    await limiter.cooldown("m", 0)
    assert await _acquire(limiter, ten_per_second) == 0.0


async def test_callers_queued_behind_a_cooldown_leave_it_no_faster_than_the_limit(
    limiter: RateLimiter,
) -> None:
    assert await _acquire(limiter, ONE_PER_SECOND) == 0.0
    await limiter.cooldown("m", 3)
    # When the cooldown ends the bucket is full (5), not 4 + 3 s of refill: then 1 request/s.
    waits = [await _acquire(limiter, ONE_PER_SECOND) for _ in range(7)]
    assert waits == pytest.approx([3.0] * 5 + [4.0, 5.0], abs=CLOSE)


# ---- no limit, scopes, expiry --------------------------------------------------------------------


async def test_an_unlimited_scope_without_cooldown_admits_at_once(limiter: RateLimiter) -> None:
    await _without_headers(limiter)
    for limit in (None, LimitConfig(spread_seconds=0)):
        assert [await _acquire(limiter, limit, tokens=10**6, max_wait=0) for _ in range(50)] == [0.0] * 50


async def test_scopes_are_independent(limiter: RateLimiter) -> None:
    for _ in range(5):
        await _acquire(limiter, ONE_PER_SECOND, scope="a")
    assert await _acquire(limiter, ONE_PER_SECOND, scope="a") == pytest.approx(1.0, abs=CLOSE)
    await limiter.cooldown("a", 30)
    assert [await _acquire(limiter, ONE_PER_SECOND, max_wait=0, scope="b") for _ in range(5)] == [0.0] * 5
    await _without_headers(limiter, "c")
    assert await _acquire(limiter, None, max_wait=0, scope="c") == 0.0


async def test_bucket_hash_expires(limiter: RateLimiter, client: AsyncRedis) -> None:
    await _acquire(limiter, ONE_PER_SECOND)
    assert 3595 <= await client.ttl(keys.limiter("m")) <= 3600
    # A cooldown keeps the hash at least until it ends.
    await limiter.cooldown("m", 100)
    assert 3695 <= await client.ttl(keys.limiter("m")) <= 3701


# ---- concurrency (real Redis only) ---------------------------------------------------------------

CONTENDED = LimitConfig(rpm=1200, burst_seconds=1, spread_seconds=0)  # capacity 20, 20 requests/s
CONTENDED_CAPACITY, CONTENDED_RATE = 20, 20.0


async def _hammer(url: str, scope: str, seconds: float) -> tuple[int, int]:
    """Take from the scope as fast as one connection can for ``seconds``; (admitted, refused)."""
    client = AsyncRedis.from_url(url)
    try:
        limiter = RateLimiter(client)
        admitted = refused = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            admission = await limiter.acquire(scope, CONTENDED, tokens=0, max_wait=0)
            if admission.admitted:
                assert admission.wait == 0.0
                admitted += 1
            else:
                refused += 1
        return admitted, refused
    finally:
        await client.aclose()


def _assert_rate_held(admitted: int, elapsed: float) -> None:
    bound = CONTENDED_CAPACITY + CONTENDED_RATE * elapsed
    assert admitted <= bound + 1, f"{admitted} admitted in {elapsed:.3f}s; at most {bound:.1f} allowed"
    assert admitted >= 0.8 * bound, f"only {admitted} admitted in {elapsed:.3f}s; {bound:.1f} were free"


async def test_real_redis_concurrent_connections_never_oversubscribe(
    redis_url: str, redis: AsyncRedis
) -> None:
    start = await _redis_now(redis)
    counts = await asyncio.gather(*(_hammer(redis_url, "shared", 2.0) for _ in range(6)))
    elapsed = await _redis_now(redis) - start
    assert sum(refused for _, refused in counts) > 0, "no contention: the test proves nothing"
    _assert_rate_held(sum(admitted for admitted, _ in counts), elapsed)


def _hammer_in_process(url: str, seconds: float, barrier: Barrier, results: "multiprocessing.Queue") -> None:
    async def run() -> tuple[int, float, float]:
        async with AsyncRedis.from_url(url) as clock:
            start = await _redis_now(clock)
            admitted, _ = await _hammer(url, "shared", seconds)
            return admitted, start, await _redis_now(clock)

    barrier.wait(timeout=60)
    results.put(asyncio.run(run()))


def test_real_redis_concurrent_processes_never_oversubscribe(redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_hammer_in_process, args=(redis_url, 1.0, barrier, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
    assert [process.exitcode for process in processes] == [0] * 4
    # The bucket is first touched after the earliest start and last touched before the latest end.
    elapsed = max(end for _, _, end in reports) - min(start for _, start, _ in reports)
    _assert_rate_held(sum(admitted for admitted, _, _ in reports), elapsed)


async def test_every_admission_leaves_the_spread_in_the_bucket(limiter: RateLimiter) -> None:
    """Calls reach the provider unevenly: the bucket is never run down below ``spread_seconds`` of the
    rate, so the provider's own bucket keeps that slack, while the rate stays the same."""
    ten_per_second = LimitConfig(rpm=600, spread_seconds=0.2)  # a bucket of 10, 2 requests kept
    start = time.monotonic()
    at_once = [await limiter.acquire("m", ten_per_second, tokens=0, max_wait=0) for _ in range(10)]
    assert [a.admitted for a in at_once] == [True] * 8 + [False] * 2
    queued = [await _acquire(limiter, ten_per_second) for _ in range(5)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(queued)]
    assert_refilled_wait(queued[0], 0.1, since=start)
    assert gaps == pytest.approx([0.1] * 4, abs=0.02)  # the rate is unchanged

    capped = LimitConfig(rpm=600, spread_seconds=5)  # at most a quarter of the bucket is kept
    admitted = [await limiter.acquire("c", capped, tokens=0, max_wait=0) for _ in range(10)]
    assert sum(a.admitted for a in admitted) == 7
