"""acquire_any: one script call admits a request on whichever deployment's bucket can take it soonest.

Each behaviour runs on fakeredis and on a real Redis, reading the limiter's answers (reservations), so
no time has to pass.
"""

import itertools

import pytest

from llmqueue.limits.limiter import RateLimiter
from llmqueue.settings import LimitConfig

# 1 request/s with room for 5 at once: waits are whole seconds, far above the time the calls take.
ONE_PER_SECOND = LimitConfig(rpm=60, burst_seconds=5, spread_seconds=0)
TWO_PER_SECOND = LimitConfig(rpm=120, burst_seconds=5, spread_seconds=0)
EU, US = LimitConfig(rpm=1, spread_seconds=0), LimitConfig(rpm=2, spread_seconds=0)
HUNDRED_TOKENS = LimitConfig(tpm=6000, spread_seconds=0)  # a second
CLOSE = 0.3  # seconds: waits here are whole seconds apart, and the machine may be busy
EU_US = [("eu", ONE_PER_SECOND), ("us", ONE_PER_SECOND)]


@pytest.fixture(params=["fake", "real"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    return RateLimiter(request.getfixturevalue("fake_redis" if request.param == "fake" else "redis"))


async def _route(
    limiter: RateLimiter, candidates: list[tuple[str, LimitConfig | None]], **kw: float
) -> tuple[str, float]:
    admission = await limiter.acquire_any(candidates, tokens=0, max_wait=kw.get("max_wait", 3600.0))
    assert admission.admitted, admission
    return candidates[admission.choice][0], admission.wait


async def test_idle_deployments_take_turns(limiter: RateLimiter) -> None:
    chosen = [(await _route(limiter, EU_US))[0] for _ in range(6)]

    assert sorted(chosen) == ["eu"] * 3 + ["us"] * 3
    assert all(a != b for a, b in itertools.pairwise(chosen))


async def test_together_they_admit_at_the_sum_of_their_limits(limiter: RateLimiter) -> None:
    # Two buckets of 5: ten at once, then one every half second (each refills once a second).
    routed = [await _route(limiter, EU_US) for _ in range(14)]

    waits = [wait for _, wait in routed]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([1.0, 1.0, 2.0, 2.0], abs=CLOSE)
    assert [name for name, _ in routed].count("eu") == 7


async def test_a_drained_deployment_leaves_the_request_to_the_other(limiter: RateLimiter) -> None:
    for _ in range(5):
        await limiter.acquire("eu", ONE_PER_SECOND, tokens=0, max_wait=0)

    assert await _route(limiter, EU_US) == ("us", 0.0)


async def test_a_deployment_in_cooldown_is_passed_over(limiter: RateLimiter) -> None:
    await limiter.cooldown("eu", 30)

    chosen = {(await _route(limiter, EU_US))[0] for _ in range(5)}

    assert chosen == {"us"}


async def test_when_all_are_in_cooldown_the_one_back_soonest_is_chosen(limiter: RateLimiter) -> None:
    await limiter.cooldown("eu", 30)
    await limiter.cooldown("us", 10)

    name, wait = await _route(limiter, EU_US)

    assert name == "us" and wait == pytest.approx(10, abs=CLOSE)


async def test_nothing_is_taken_from_the_deployments_not_chosen(limiter: RateLimiter) -> None:
    for _ in range(5):
        await limiter.acquire("us", ONE_PER_SECOND, tokens=0, max_wait=0)
    await _route(limiter, EU_US)

    # eu gave one: four left at once; us still drained.
    assert [
        (await limiter.acquire("eu", ONE_PER_SECOND, tokens=0, max_wait=0)).admitted for _ in range(5)
    ] == [True] * 4 + [False]


async def test_refused_everywhere_takes_nothing_and_says_the_shortest_wait(limiter: RateLimiter) -> None:
    # One request each a minute (eu) or half a minute (us): the set-up's own time does not matter.
    candidates = [("eu", EU), ("us", US)]
    for scope, limit in candidates:
        await limiter.acquire(scope, limit, tokens=0, max_wait=0)

    admission = await limiter.acquire_any(candidates, tokens=0, max_wait=0)

    assert not admission.admitted
    assert candidates[admission.choice][0] == "us"
    assert admission.wait == pytest.approx(30, abs=1)
    # Nothing was taken: us still admits its next request at the same time, eu a minute after its first.
    assert (await limiter.acquire("us", US, tokens=0, max_wait=60)).wait == pytest.approx(30, abs=1)
    assert (await limiter.acquire("eu", EU, tokens=0, max_wait=60)).wait == pytest.approx(60, abs=1)


async def test_each_candidate_keeps_its_own_limit(limiter: RateLimiter) -> None:
    candidates = [("slow", ONE_PER_SECOND), ("fast", TWO_PER_SECOND)]

    chosen = [(await _route(limiter, candidates, max_wait=0))[0] for _ in range(15)]

    assert chosen.count("slow") == 5 and chosen.count("fast") == 10


async def test_one_candidate_is_acquire(limiter: RateLimiter) -> None:
    admission = await limiter.acquire_any([("eu", ONE_PER_SECOND)], tokens=0, max_wait=0)

    assert admission.admitted and admission.choice == 0 and admission.ticket is not None


async def test_no_candidate_is_an_error(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="at least one"):
        await limiter.acquire_any([], tokens=0, max_wait=0)


async def test_token_limits_route_by_tokens_too(limiter: RateLimiter) -> None:
    tokens = [("eu", HUNDRED_TOKENS), ("us", HUNDRED_TOKENS)]  # 100 tokens a second each
    first = await limiter.acquire_any(tokens, tokens=90, max_wait=0)
    second = await limiter.acquire_any(tokens, tokens=90, max_wait=0)

    assert first.admitted and second.admitted
    assert {first.choice, second.choice} == {0, 1}
