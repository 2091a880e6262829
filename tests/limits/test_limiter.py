"""The shared limiter: scheduling, cooldowns, capacity given back, parked jobs, priorities, routing.

Each behaviour runs on fakeredis and on a real Redis with a clock the test moves (``clock``), so every
wait is asserted exactly. Only the concurrency tests at the end use Redis ``TIME``.
"""

import asyncio
import itertools
import math
import multiprocessing
import random
import time
from multiprocessing.synchronize import Barrier

import pytest
from redis.asyncio import Redis as AsyncRedis

from llmqueue import keys
from llmqueue.limits import view
from llmqueue.limits.headers import ProviderLimits, Reading
from llmqueue.limits.limiter import Admission, RateLimiter, Reservation
from llmqueue.models import PRIORITIES
from llmqueue.settings import LimitConfig
from tests.support.answered import AnsweredBefore
from tests.support.clock import Clock

# 1 request/s with room for 5 at once.
ONE_PER_SECOND = LimitConfig(rpm=60, burst_seconds=5, spread_seconds=0)
# 10 tokens/s with room for 100 at once.
TEN_TOKENS_PER_SECOND = LimitConfig(tpm=600, burst_seconds=10, spread_seconds=0)
BATCH, DEFAULT, INTERACTIVE = PRIORITIES["batch"], PRIORITIES["default"], PRIORITIES["interactive"]


async def take(
    limiter: RateLimiter,
    limit: LimitConfig | None,
    *,
    tokens: int = 0,
    max_wait: float = 3600.0,
    scope: str = "m",
    priority: int = DEFAULT,
    job: str | None = None,
) -> Admission:
    return await limiter.acquire(
        [(scope, limit)], tokens=tokens, max_wait=max_wait, priority=priority, job_id=job
    )


async def wait_of(limiter: RateLimiter, limit: LimitConfig | None, **options: object) -> float:
    """Acquire, insist it was admitted, and return the wait the caller must sleep."""
    admission = await take(limiter, limit, **options)  # type: ignore[arg-type]
    assert admission.admitted, admission
    return admission.wait


def openai_said(rpm: float | None = None, left: float | None = None) -> ProviderLimits:
    return ProviderLimits("openai", requests=Reading(limit=rpm, remaining=left))


# ---- scheduling ----------------------------------------------------------------------------------

SCHEDULES = [
    # (limit, tokens per call, calls) -> waits
    (ONE_PER_SECOND, 0, 8, [0, 0, 0, 0, 0, 1, 2, 3]),
    (LimitConfig(rpm=60, burst_seconds=1, spread_seconds=0), 0, 3, [0, 1, 2]),
    (LimitConfig(rpm=30, burst_seconds=1, spread_seconds=0), 0, 3, [0, 2, 4]),  # less than 1 per burst
    (LimitConfig(rpm=600, burst_seconds=1, spread_seconds=0.2), 0, 10, [0] * 8 + [0.1, 0.2]),  # spread
    (LimitConfig(rpm=600, burst_seconds=1, spread_seconds=5), 0, 8, [0] * 7 + [0.05]),  # a quarter at most
    (TEN_TOKENS_PER_SECOND, 50, 4, [0, 0, 5, 10]),
    (LimitConfig(rpm=600, tpm=600, burst_seconds=10, spread_seconds=0), 50, 3, [0, 0, 5]),  # tokens bind
]


@pytest.mark.parametrize(("limit", "tokens", "calls", "waits"), SCHEDULES)
async def test_calls_go_in_a_burst_then_spaced_at_the_rate(
    limiter: RateLimiter, limit: LimitConfig, tokens: int, calls: int, waits: list[float]
) -> None:
    got = [await wait_of(limiter, limit, tokens=tokens) for _ in range(calls)]
    assert got == pytest.approx(waits, abs=1e-6)


async def test_a_call_that_would_wait_past_max_wait_takes_nothing(limiter: RateLimiter) -> None:
    for _ in range(5):
        await wait_of(limiter, ONE_PER_SECOND)
    refused = await take(limiter, ONE_PER_SECOND, max_wait=0.5)
    assert not refused.admitted and refused.wait == pytest.approx(1.0)
    assert await wait_of(limiter, ONE_PER_SECOND) == pytest.approx(1.0)  # the refusal took nothing


async def test_the_bucket_refills_with_time(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(5):
        await wait_of(limiter, ONE_PER_SECOND)
    clock.advance(2)
    assert [await wait_of(limiter, ONE_PER_SECOND) for _ in range(3)] == pytest.approx([0, 0, 1])


async def test_a_cost_above_the_burst_goes_from_a_full_bucket_and_its_debt_delays_the_next(
    limiter: RateLimiter, clock: Clock
) -> None:
    assert await wait_of(limiter, TEN_TOKENS_PER_SECOND, tokens=150) == 0  # 150 > the burst of 100
    assert await wait_of(limiter, TEN_TOKENS_PER_SECOND, tokens=10) == pytest.approx(6.0)
    clock.advance(20)
    await wait_of(limiter, TEN_TOKENS_PER_SECOND, tokens=50)
    # Not before the bucket is full again: 5 s after the 50 tokens.
    assert await wait_of(limiter, TEN_TOKENS_PER_SECOND, tokens=150) == pytest.approx(5.0)


async def test_a_call_larger_than_a_minutes_limit_is_refused_for_good(limiter: RateLimiter) -> None:
    limit = LimitConfig(tpm=60_000, spread_seconds=0)
    refused = await take(limiter, limit, tokens=143_000)
    assert not refused.admitted and refused.too_large is not None
    assert str(refused.too_large) == (
        "the request needs 143000 tokens but the limit is 60000 tokens per minute"
    )
    assert await wait_of(limiter, limit, tokens=900) == 0  # it took nothing and holds nobody up


# ---- cooldowns -----------------------------------------------------------------------------------


async def test_a_cooldown_pauses_every_caller_even_without_a_limit(
    limiter: RateLimiter, clock: Clock
) -> None:
    assert await limiter.cooldown("m", 2.0) == pytest.approx(2.0)
    assert await limiter.cooldown("m", 0.5) == pytest.approx(2.0)  # a shorter one does not shorten it
    assert not (await take(limiter, None, max_wait=1)).admitted
    clock.advance(2.5)
    assert await limiter.cooldown("m", 0) == 0


async def test_after_a_429_calls_leave_spaced_at_the_rate_not_in_a_burst(limiter: RateLimiter) -> None:
    await wait_of(limiter, ONE_PER_SECOND)
    await limiter.cooldown("m", 3.0)
    waits = [await wait_of(limiter, ONE_PER_SECOND) for _ in range(3)]
    assert waits == pytest.approx([4, 5, 6])  # the provider's bucket is empty at the end of the pause


async def test_reservations_voided_by_a_429_are_retaken_spaced_never_on_one_instant(
    limiter: RateLimiter, clock: Clock
) -> None:
    queued = [await take(limiter, ONE_PER_SECOND) for _ in range(8)]  # 5 at once, then 1, 2, 3 s
    clock.advance(0.5)
    await limiter.cooldown("m", 2.0)  # a 429: every call due before 2.5 s is void
    void = [a.reservation for a in queued if a.wait < 2.5]
    for reservation in void:
        assert reservation is not None
        await reservation.cancel()
    retaken = [await wait_of(limiter, ONE_PER_SECOND) for _ in void]
    kept = [a.wait - 0.5 for a in queued if a.wait >= 2.5]
    sends = sorted(retaken + kept)
    assert min(sends) >= 2.0 - 1e-6
    assert all(later - earlier >= 1 - 1e-6 for earlier, later in itertools.pairwise(sends))


async def test_a_deployment_that_fails_again_soon_is_paused_longer(
    limiter: RateLimiter, clock: Clock
) -> None:
    assert await limiter.cooldown("d", 1.0, longest=8, rate_limited=False) == pytest.approx(1.0)
    clock.advance(1.5)
    assert await limiter.cooldown("d", 1.0, longest=8, rate_limited=False) == pytest.approx(2.0)
    assert (await limiter.inspect("d")).rate_limited_last_minute == 0


# ---- capacity given back, parked jobs ------------------------------------------------------------


async def test_tokens_given_back_are_usable_at_once_and_wake_parked_jobs_in_priority_order(
    limiter: RateLimiter, woken: list[tuple[str, float]]
) -> None:
    limit = LimitConfig(tpm=60_000, spread_seconds=0)
    big = await take(limiter, limit, tokens=50_016)  # max_tokens 50,000: its debt holds up ~49 s
    assert big.reservation is not None
    parked = [await take(limiter, limit, tokens=100, max_wait=2, job=f"small-{n}") for n in range(3)]
    agent = await take(limiter, limit, tokens=100, max_wait=2, priority=INTERACTIVE, job="agent")
    assert not any(a.admitted for a in [*parked, agent])
    assert min(a.wait for a in parked) > 45

    await big.reservation.answered(None, {"t": 50_000})  # the answer used 16 tokens

    assert [job for job, _ in woken] == ["agent", "small-0", "small-1", "small-2"]
    assert all(delay < 0.1 for _, delay in woken)
    assert await wait_of(limiter, limit, tokens=100, priority=INTERACTIVE) == 0


async def test_a_parked_job_that_was_admitted_since_is_not_woken(
    limiter: RateLimiter, clock: Clock, woken: list[tuple[str, float]]
) -> None:
    for _ in range(5):
        first = await take(limiter, ONE_PER_SECOND)
    assert not (await take(limiter, ONE_PER_SECOND, max_wait=0, job="j")).admitted
    clock.advance(1)
    assert (await take(limiter, ONE_PER_SECOND, max_wait=0, job="j")).admitted
    assert first.reservation is not None
    await first.reservation.cancel()
    assert woken == []


async def test_a_limit_learnt_higher_wakes_parked_jobs(
    limiter: RateLimiter, woken: list[tuple[str, float]]
) -> None:
    probe = await take(limiter, None)  # no limit known yet
    assert probe.reservation is not None
    await probe.reservation.answered(openai_said(rpm=60, left=1), {})  # the key: 1 a second
    sent = [await take(limiter, None) for _ in range(3)]
    assert [a.wait for a in sent] == pytest.approx([0, 1, 2])
    parked = await take(limiter, None, max_wait=1, job="j")
    assert not parked.admitted and parked.wait == pytest.approx(3)
    assert sent[0].reservation is not None
    await sent[0].reservation.answered(openai_said(rpm=600, left=9), {})  # the key's limit went up
    assert [job for job, _ in woken] == ["j"]
    assert woken[0][1] < 1


async def test_limits_stated_in_headers_replace_a_higher_configured_one_keeping_what_is_owed(
    limiter: RateLimiter,
) -> None:
    configured = LimitConfig(rpm=240, burst_seconds=1, spread_seconds=0)  # 4 a second, 4 at once
    sent = [await take(limiter, configured) for _ in range(4)]
    assert [a.wait for a in sent] == [0, 0, 0, 0]
    reservation = sent[0].reservation
    assert reservation is not None
    learnt = await reservation.answered(openai_said(rpm=60, left=0), {})
    assert learnt.rpm == 60
    # 4 requests owed at 1 a second: the next goes 4 s on (3 after the burst of 1 is refilled).
    assert await wait_of(limiter, configured) == pytest.approx(4.0)
    state = await limiter.inspect("m")
    assert (state.rpm, state.configured_rpm, state.learnt_rpm, state.source) == (60, 240, 60, "both")


async def test_what_the_provider_says_is_left_wins_over_what_the_scope_believes(limiter: RateLimiter) -> None:
    limit = LimitConfig(rpm=60, burst_seconds=10, spread_seconds=0)  # 10 at once, 1 a second
    first = await take(limiter, limit)
    assert first.reservation is not None
    await first.reservation.answered(openai_said(rpm=60, left=3), {})  # another program took 6
    waits = [await wait_of(limiter, limit) for _ in range(4)]
    assert waits == pytest.approx([0, 0, 0, 1])


async def another_client_took_two(limiter: RateLimiter, clock: Clock) -> LimitConfig:
    """Two answers 5 s apart on a 60 rpm scope: 4 left, 5 refilled, our 1 call, so 8 expected; 6 said:
    another client took 2 in the 5 s watched, 24 a minute of 60. Returns the limit."""
    limit = LimitConfig(rpm=60, burst_seconds=10, spread_seconds=0)  # 10 at once, 1 a second
    first = await take(limiter, limit)
    assert first.reservation is not None
    await first.reservation.answered(openai_said(rpm=60, left=4), {})
    clock.advance(5)
    second = await take(limiter, limit)
    assert second.reservation is not None
    await second.reservation.answered(openai_said(rpm=60, left=6), {})
    return limit


def others_share_after(seconds: float) -> float:
    """The share of another_client_took_two's 60 rpm key after ``seconds``: what it took and the time it
    was watched both decay (over 10 s); the time counts as 5 s at least."""
    decay = math.exp(-seconds / 10)
    return 2 * decay / max(5 * decay, 5)


async def test_another_clients_use_is_what_the_provider_lost_beyond_our_calls(
    limiter: RateLimiter, clock: Clock
) -> None:
    limit = await another_client_took_two(limiter, clock)
    assert (await limiter.inspect("m")).others_request_share == pytest.approx(0.4)
    # Ours are spaced for what it leaves: each takes 1 / (1 - share) s of the rate. 20 s on, the
    # bucket is full again and the share has decayed to e^-2 (13.5%), still noticed (5%).
    clock.advance(20)
    each = 1 / (1 - others_share_after(20))
    waits = [await wait_of(limiter, limit) for _ in range(12)]
    assert waits[10:] == pytest.approx([11 * each - 10, 12 * each - 10], rel=1e-3)  # 10 s held 9.5


async def test_a_share_below_five_percent_is_not_taken_from_our_rate(
    limiter: RateLimiter, clock: Clock
) -> None:
    limit = await another_client_took_two(limiter, clock)
    clock.advance(32)  # 40% decays to e^-3.2 (4.1%): measured, shown, and no longer slowing us
    assert (await limiter.inspect("m")).others_request_share == pytest.approx(others_share_after(32))
    assert others_share_after(32) < 0.05
    assert [await wait_of(limiter, limit) for _ in range(11)][10] == pytest.approx(1)


async def test_an_answer_is_compared_net_of_the_calls_admitted_after_it(limiter: RateLimiter) -> None:
    limit = LimitConfig(rpm=60, burst_seconds=10, spread_seconds=0)
    calls = [await take(limiter, limit) for _ in range(5)]
    reservation = calls[0].reservation
    assert reservation is not None
    # The provider saw only the first call: 9 left, while the four after it are still on their way.
    await reservation.answered(openai_said(rpm=60, left=9), {})
    assert [await wait_of(limiter, limit) for _ in range(6)] == pytest.approx([0, 0, 0, 0, 0, 1])
    assert (await limiter.inspect("m")).others_request_share == 0


async def test_noise_in_what_the_provider_says_is_left_teaches_no_share(
    limiter: RateLimiter, clock: Clock
) -> None:
    # Our calls alone, at the key's 10 a second, each answered with what the provider had left give or
    # take a call or two: the provider counts a call when it arrives, not when we sent it, and rounds.
    # Such noise adds up to nothing over a run (what one answer over-counts the next under-counts).
    limit = LimitConfig(rpm=600, burst_seconds=2, spread_seconds=0)
    noise = random.Random(7)
    for _ in range(200):
        admission = await take(limiter, limit)
        assert admission.reservation is not None
        left = 10 + round(noise.uniform(-2, 2))
        await admission.reservation.answered(openai_said(rpm=600, left=left), {})
        clock.advance(0.1)
        assert (await limiter.inspect("m")).others_request_share <= 0.05


async def test_a_provider_that_refilled_during_a_pause_raises_the_scope_to_what_it_says(
    limiter: RateLimiter, clock: Clock
) -> None:
    limit = LimitConfig(rpm=60, burst_seconds=10, spread_seconds=0)  # 10 at once, 1 a second
    first = (await take(limiter, limit)).reservation
    assert first is not None
    await limiter.cooldown("m", 2.0)  # believed empty at the pause's end: 1 call in the bucket at 3 s
    clock.advance(3)
    await first.answered(openai_said(rpm=60, left=9), {})  # 9 left before the pause, refilled since
    assert [await wait_of(limiter, limit) for _ in range(11)] == pytest.approx([0] * 10 + [1])


async def test_calls_scheduled_beyond_the_burst_keep_their_spacing_when_the_provider_has_more(
    limiter: RateLimiter, clock: Clock
) -> None:
    limit = LimitConfig(rpm=60, burst_seconds=10, spread_seconds=0)
    first = (await take(limiter, limit)).reservation
    assert first is not None
    await limiter.cooldown("m", 2.0)
    clock.advance(3)
    assert [await wait_of(limiter, limit) for _ in range(5)] == pytest.approx([0, 1, 2, 3, 4])
    # The provider has room for more, but five calls are already set for 0-4 s: a raise now would put
    # the next ones on their instants. The next goes after them, a call's time apart.
    await first.answered(openai_said(rpm=60, left=9), {})
    assert await wait_of(limiter, limit) == pytest.approx(5)


async def test_tokens_given_back_by_calls_granted_earlier_do_not_count_as_left_at_the_provider(
    limiter: RateLimiter,
) -> None:
    limit = LimitConfig(tpm=600, burst_seconds=10, spread_seconds=0)  # 100 tokens at once, 10 a second
    first, second, third = [(await take(limiter, limit, tokens=30)).reservation for _ in range(3)]
    assert first is not None and second is not None and third is not None
    await first.answered(None, {"t": 30})  # used nothing: 40 tokens in the bucket now
    # The provider had 70 left when the second call reached it; the third (30) is still on its way.
    # The first's tokens came back after the second was granted: they are already in the 40, not also
    # in the 70 (taken as such, the scope would believe 70 and send 30 more than the provider holds).
    said = ProviderLimits("openai", tokens=Reading(limit=600, remaining=70))
    await second.answered(said, {})
    assert [await wait_of(limiter, limit, tokens=t) for t in (40, 10)] == pytest.approx([0, 1])


# ---- probing and unlimited scopes ----------------------------------------------------------------


async def test_a_scope_with_no_limit_sends_two_probes_then_waits_for_an_answer(limiter: RateLimiter) -> None:
    probes = [await take(limiter, None, max_wait=0) for _ in range(3)]
    assert [(a.admitted, a.state) for a in probes] == [
        (True, "probing"),
        (True, "probing"),
        (False, "probing"),
    ]
    assert probes[0].reservation is not None
    await probes[0].reservation.answered(None, {})  # an answer that states no limit
    after = await take(limiter, None, max_wait=0)
    assert (after.admitted, after.state) == (True, "unlimited")


async def test_a_configured_scope_probes_until_its_provider_first_answers(
    client: AsyncRedis, clock: Clock
) -> None:
    # A limit configured above the key's own would send a whole burst before the first answer could
    # lower it: two calls go, the rest wait for an answer, and the answer's headers set the schedule.
    limiter = RateLimiter(client, clock=clock)
    configured = LimitConfig(rpm=2400, burst_seconds=1, spread_seconds=0)  # 40 at once
    first = [await take(limiter, configured, max_wait=0) for _ in range(3)]
    assert [(a.admitted, a.state) for a in first] == [
        (True, "probing"),
        (True, "probing"),
        (False, "probing"),
    ]
    assert first[0].reservation is not None
    await first[0].reservation.answered(openai_said(rpm=600, left=9), {})  # the key's 10 a second
    after = [await take(limiter, configured, max_wait=0) for _ in range(10)]
    assert [a.admitted for a in after] == [True] * 8 + [False] * 2  # 9 left, one of them still out
    assert after[0].state == "limited"


async def test_a_failed_probe_frees_its_place_and_a_429_without_headers_ends_a_configured_probe(
    client: AsyncRedis, clock: Clock
) -> None:
    limiter = RateLimiter(client, clock=clock)
    configured = LimitConfig(rpm=600, burst_seconds=1, spread_seconds=0)
    probes = [await take(limiter, configured, max_wait=0) for _ in range(2)]
    assert not (await take(limiter, configured, max_wait=0)).admitted
    assert probes[0].reservation is not None and probes[1].reservation is not None
    await probes[0].reservation.failed()  # a 5xx: nothing learnt, but the next probe may go
    again = await take(limiter, configured, max_wait=0)
    assert (again.admitted, again.state) == (True, "probing")
    await probes[1].reservation.refused(None)  # a 429 stating nothing: the configured limit stands
    after = await take(limiter, configured, max_wait=0)
    assert (after.admitted, after.state) == (True, "limited")


# ---- priorities ----------------------------------------------------------------------------------

TEN_WITH_RESERVE = LimitConfig(rpm=600, reserve=0.2, spread_seconds=0)  # 10 at once, the last 2 kept


async def test_batch_jobs_leave_the_reserve_to_higher_priorities(limiter: RateLimiter) -> None:
    batch = [await take(limiter, TEN_WITH_RESERVE, max_wait=0, priority=BATCH) for _ in range(9)]
    assert [a.admitted for a in batch] == [True] * 8 + [False]
    assert (await take(limiter, TEN_WITH_RESERVE, max_wait=0)).admitted


async def test_a_refused_higher_priority_job_goes_before_lower_ones(
    limiter: RateLimiter, clock: Clock
) -> None:
    for _ in range(10):
        await take(limiter, TEN_WITH_RESERVE)
    refused = await take(limiter, TEN_WITH_RESERVE, max_wait=0, priority=INTERACTIVE)
    assert not refused.admitted and refused.wait == pytest.approx(0.1)
    held = await take(limiter, TEN_WITH_RESERVE, max_wait=2, priority=DEFAULT)
    assert not held.admitted  # the way is clear for the interactive job until it is due back
    clock.advance(0.1)
    assert await wait_of(limiter, TEN_WITH_RESERVE, max_wait=0, priority=INTERACTIVE) == 0


async def test_a_priority_outside_0_to_9_is_an_error(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="0 to 9"):
        await take(limiter, ONE_PER_SECOND, priority=10)


# ---- routing over deployments --------------------------------------------------------------------


async def test_idle_deployments_share_the_load_then_the_sooner_one_wins(limiter: RateLimiter) -> None:
    # eu: 5 at once, then 1 a second; us: 10 at once, then 2 a second.
    candidates = [("eu", ONE_PER_SECOND), ("us", LimitConfig(rpm=120, burst_seconds=5, spread_seconds=0))]
    chosen = []
    for _ in range(16):
        admission = await limiter.acquire(candidates, max_wait=3600)
        chosen.append((candidates[admission.choice][0], admission.wait))
    assert sorted(name for name, wait in chosen if wait == 0) == ["eu"] * 5 + ["us"] * 10
    assert chosen[15] == ("us", pytest.approx(0.5))


async def test_a_deployment_cooling_down_is_skipped(limiter: RateLimiter) -> None:
    await limiter.cooldown("eu", 30)
    admission = await limiter.acquire([("eu", ONE_PER_SECOND), ("us", ONE_PER_SECOND)], max_wait=0)
    assert (admission.admitted, admission.choice) == (True, 1)


# ---- what the view shows -------------------------------------------------------------------------


async def test_a_configured_limit_shows_while_workers_use_it(limiter: RateLimiter, clock: Clock) -> None:
    await take(limiter, LimitConfig(rpm=600))
    state = await limiter.inspect("m")
    assert (state.configured_rpm, state.rpm, state.source, state.requests_last_minute) == (
        600,
        600,
        "configured",
        1,
    )
    clock.advance(120)  # the run that set it has ended
    state = await limiter.inspect("m")
    assert (state.configured_rpm, state.source, state.requests_last_minute) == (0, "none", 0)


async def test_the_scope_is_kept_an_hour_after_its_last_use(limiter: RateLimiter, client: AsyncRedis) -> None:
    await take(limiter, ONE_PER_SECOND)
    assert 3595 <= await client.ttl(keys.limiter("m")) <= 3600 + 5  # and until its reservations are due
    assert await view.scopes(client) == ["m"]


async def test_reservation_settles_only_what_it_took(limiter: RateLimiter) -> None:
    admission = await take(limiter, TEN_TOKENS_PER_SECOND, tokens=40)
    reservation = admission.reservation
    assert isinstance(reservation, Reservation)
    assert reservation.taken == {"t": 40}
    await reservation.refused(None)  # a 429: its tokens go back
    assert await wait_of(limiter, TEN_TOKENS_PER_SECOND, tokens=100) == 0


# ---- concurrency (real Redis, its own clock) -----------------------------------------------------

CONTENDED = LimitConfig(rpm=1200, burst_seconds=1, spread_seconds=0)  # 20 at once, 20 a second


async def _redis_now(client: AsyncRedis) -> float:
    seconds, microseconds = await client.time()
    return seconds + microseconds / 1_000_000


async def _hammer(url: str, seconds: float) -> tuple[int, int]:
    """Take from one scope as fast as one connection can for ``seconds``; (admitted, refused)."""
    client = AsyncRedis.from_url(url)
    try:
        limiter = AnsweredBefore(client)
        admitted = refused = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            admission = await limiter.acquire([("shared", CONTENDED)], max_wait=0)
            admitted, refused = admitted + admission.admitted, refused + (not admission.admitted)
        return admitted, refused
    finally:
        await client.aclose()


def _assert_rate_held(admitted: int, elapsed: float) -> None:
    bound = 20 + 20 * elapsed
    assert admitted <= bound + 1, f"{admitted} admitted in {elapsed:.3f}s; at most {bound:.1f} allowed"
    assert admitted >= 0.8 * bound, f"only {admitted} admitted in {elapsed:.3f}s; {bound:.1f} were free"


async def test_concurrent_connections_never_oversubscribe(redis_url: str, redis: AsyncRedis) -> None:
    start = await _redis_now(redis)
    counts = await asyncio.gather(*(_hammer(redis_url, 2.0) for _ in range(6)))
    elapsed = await _redis_now(redis) - start
    assert sum(refused for _, refused in counts) > 0, "no contention: the test proves nothing"
    _assert_rate_held(sum(admitted for admitted, _ in counts), elapsed)


def _hammer_in_process(url: str, seconds: float, barrier: Barrier, results: "multiprocessing.Queue") -> None:
    async def run() -> tuple[int, float, float]:
        async with AsyncRedis.from_url(url) as clock:
            start = await _redis_now(clock)
            admitted, _ = await _hammer(url, seconds)
            return admitted, start, await _redis_now(clock)

    barrier.wait(timeout=60)
    results.put(asyncio.run(run()))


def test_concurrent_processes_never_oversubscribe(redis_url: str) -> None:
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
    elapsed = max(end for _, _, end in reports) - min(start for _, start, _ in reports)
    _assert_rate_held(sum(admitted for admitted, _, _ in reports), elapsed)
