"""Limits learnt from the provider's headers: probing, learnt and configured limits, what is left, the
share of another client, the token charge factor, and what ``inspect`` shows. On fakeredis and a real
Redis; waits read from the answers.
"""

import asyncio
import math
import time
from typing import Any

import pytest
from redis.asyncio import Redis as AsyncRedis

from llmqueue.limits.feedback import LimitFeedback
from llmqueue.limits.headers import ProviderLimits, Reading
from llmqueue.limits.limiter import Admission, Learnt, RateLimiter
from llmqueue.limits.tokens import TokenEstimate
from llmqueue.settings import LimitConfig
from llmqueue.simulator.limits import RateLimits

CLOSE = 0.2  # seconds: a loaded machine may take this long between two calls
# 1 request a second in a bucket of 10, so the time the test itself takes barely refills it.
SLOW = LimitConfig(rpm=60, burst_seconds=10, spread_seconds=0)


@pytest.fixture(params=["fake", "real"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    client: AsyncRedis = request.getfixturevalue("fake_redis" if request.param == "fake" else "redis")
    return RateLimiter(client)


def said(
    rpm: float | None = None,
    requests_left: float | None = None,
    tpm: float | None = None,
    tokens_left: float | None = None,
) -> ProviderLimits:
    requests = Reading(limit=rpm, remaining=requests_left) if rpm or requests_left is not None else None
    tokens = Reading(limit=tpm, remaining=tokens_left) if tpm or tokens_left is not None else None
    return ProviderLimits("openai", requests=requests, tokens=tokens)


async def admitted(limiter: RateLimiter, limit: LimitConfig | None, *, tokens: int = 0) -> Admission:
    admission = await limiter.acquire("m", limit, tokens=tokens, max_wait=60)
    assert admission.admitted, admission
    return admission


async def test_a_scope_with_no_limit_probes_with_a_few_calls_until_an_answer_says(
    limiter: RateLimiter,
) -> None:
    first = [await limiter.acquire("m", None, tokens=0, max_wait=2) for _ in range(3)]
    assert [a.admitted for a in first] == [True, True, False]
    assert {a.state for a in first} == {"probing"}
    assert first[2].wait == pytest.approx(0.2, abs=CLOSE)

    await limiter.observe("m", None, said(rpm=120, requests_left=1), None)

    # Learnt: 2 a second in a bucket of 2, starting from the 1 the provider said was left; each
    # admission leaves the default spread (0.1 s of the rate: 0.2 of a request) in the bucket.
    waits = [(await admitted(limiter, None)).wait for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.6, 1.1], abs=0.04)
    state = await limiter.inspect("m")
    assert (state.state, state.source, state.rpm, state.learnt_rpm) == ("limited", "learnt", 120, 120)


async def test_a_scope_whose_provider_states_no_limit_is_unlimited(limiter: RateLimiter) -> None:
    await limiter.observe("m", None, None, None)
    answers = [await limiter.acquire("m", None, tokens=10**6, max_wait=0) for _ in range(50)]
    assert all(a.admitted and a.wait == 0.0 and a.state == "unlimited" for a in answers)
    state = await limiter.inspect("m")
    assert (state.state, state.source, state.requests_last_minute) == ("unlimited", "none", 50)


async def test_answers_of_an_unlimited_scope_cost_no_round_trip_until_one_states_a_limit(
    limiter: RateLimiter,
) -> None:
    observed: list[object] = []
    observe = limiter.observe

    async def counted(*args: Any, **kwargs: Any) -> Learnt:
        observed.append(args[2])
        return await observe(*args, **kwargs)

    limiter.observe = counted  # type: ignore[method-assign]
    feedback = LimitFeedback(limiter)

    async def one_call(headers: dict[str, str]) -> None:
        admission = await limiter.acquire("m", None, tokens=0, max_wait=0)
        feedback.admitted("m", admission)
        await feedback.answered(
            "m", None, admission.ticket, headers, estimate=TokenEstimate(0, 0), used=5, sets_max_tokens=False
        )

    await one_call({})  # probing: the first answer without headers marks the scope unlimited
    for _ in range(5):
        await one_call({})
    assert observed == [None]
    await one_call({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"})
    await one_call({})  # admitted as limited now: every answer is observed again
    assert len(observed) == 3 and observed[1] is not None
    state = await limiter.inspect("m")
    assert (state.state, state.learnt_rpm) == ("limited", 600)


async def test_a_worker_new_to_an_unlimited_scope_reports_once_and_stops_counting_tokens(
    limiter: RateLimiter,
) -> None:
    await limiter.observe("m", None, None, None)  # another worker found the scope unlimited
    feedback = LimitFeedback(limiter)
    assert feedback.needs_estimate("m", None)  # nothing heard yet: a token limit may exist
    for _ in range(3):
        admission = await limiter.acquire("m", None, tokens=0, max_wait=0)
        assert admission.state == "unlimited"
        feedback.admitted("m", admission)
        no_headers: dict[str, str] = {}
        await feedback.answered(
            "m", None, None, no_headers, estimate=TokenEstimate(0, 0), used=5, sets_max_tokens=False
        )
    assert not feedback.needs_estimate("m", None)


async def test_a_configured_limit_above_the_providers_gives_way_to_it(limiter: RateLimiter) -> None:
    configured = LimitConfig(rpm=1200, spread_seconds=0)  # 20 a second; the key allows 10
    ticket = (await admitted(limiter, configured)).ticket
    learnt = await limiter.observe("m", configured, said(rpm=600, requests_left=9), ticket)
    assert (learnt.rpm, learnt.tpm) == (600, 0)
    state = await limiter.inspect("m")
    assert (state.rpm, state.configured_rpm, state.learnt_rpm, state.source) == (600, 1200, 600, "both")
    assert state.request_capacity == 10


async def test_a_configured_limit_below_the_providers_is_kept(limiter: RateLimiter) -> None:
    configured = LimitConfig(rpm=300, spread_seconds=0)
    ticket = (await admitted(limiter, configured)).ticket
    await limiter.observe("m", configured, said(rpm=600, requests_left=9), ticket)
    assert (await limiter.inspect("m")).rpm == 300


async def test_remaining_below_what_the_bucket_believes_lowers_it_at_once(limiter: RateLimiter) -> None:
    # A bucket of 10, 2 s of traffic (20 requests) to learn a factor over.
    limit = LimitConfig(rpm=600, spread_seconds=0)
    ticket = (await admitted(limiter, limit)).ticket
    assert ticket is not None and ticket.request_belief == pytest.approx(9, abs=0.1)
    # Another client took 5 of the key: the provider had 4 left after this call, not 9.
    await limiter.observe("m", limit, said(rpm=600, requests_left=4), ticket)
    state = await limiter.inspect("m")
    assert state.request_level == pytest.approx(4, abs=1.0)  # not 9; refilled 10/s since
    # One shortfall is a burst, not a rate: the share learnt for another client moves only a little.
    assert 0.0 < state.others_request_share < 0.15


async def test_remaining_above_the_belief_never_raises_the_bucket(limiter: RateLimiter) -> None:
    for _ in range(9):
        ticket = (await admitted(limiter, SLOW)).ticket
    await limiter.observe("m", SLOW, said(rpm=60, requests_left=9), ticket)
    assert (await admitted(limiter, SLOW)).wait == 0.0
    assert (await admitted(limiter, SLOW)).wait == pytest.approx(1.0, abs=CLOSE)


async def test_a_correction_is_not_applied_twice_by_calls_in_flight_together(limiter: RateLimiter) -> None:
    first = (await admitted(limiter, SLOW)).ticket  # belief 9
    second = (await admitted(limiter, SLOW)).ticket  # belief 8
    # The provider had 3 fewer than believed at both calls: one shortfall, seen twice.
    await limiter.observe("m", SLOW, said(rpm=60, requests_left=6), first)
    await limiter.observe("m", SLOW, said(rpm=60, requests_left=5), second)
    assert (await limiter.inspect("m")).request_level == pytest.approx(5, abs=0.3)


async def test_the_providers_own_token_count_is_learnt_and_charged(limiter: RateLimiter) -> None:
    # 1,000 tokens a second in buckets of 30 s (provider's and ours), so 25 calls need no refill.
    limit = LimitConfig(tpm=60_000, burst_seconds=30, spread_seconds=0)
    began = time.monotonic()
    provider = RateLimits(None, 60_000, 30.0, began)
    for _ in range(25):
        admission = await admitted(limiter, limit, tokens=500)
        # The provider counts twice what the workers estimate.
        assert provider.admit(1000, time.monotonic()) is None
        left = provider.tokens.level(time.monotonic()) if provider.tokens else 0
        await limiter.observe("m", limit, said(tpm=60_000, tokens_left=int(left)), admission.ticket)
    state = await limiter.inspect("m")
    assert state.token_factor == pytest.approx(2.0, abs=0.2)
    later = await admitted(limiter, limit, tokens=500)
    assert later.ticket is not None and later.ticket.tokens_charged == pytest.approx(1000, abs=100)
    # What the bucket holds follows the provider's count, not the estimate: 26 calls of 1,000 from 30,000,
    # refilled at 1,000 a second (a loaded machine takes a good part of a second over these calls).
    level, elapsed = (await limiter.inspect("m")).token_level, time.monotonic() - began
    assert 4_000 - 300 <= level <= 4_000 + 1_000 * elapsed + 300, (level, elapsed)


async def test_inspect_counts_requests_and_429s_of_the_last_minute(limiter: RateLimiter) -> None:
    limit = LimitConfig(rpm=600, tpm=60_000, spread_seconds=0)
    began = time.monotonic()
    for _ in range(3):
        await admitted(limiter, limit, tokens=10)
    await limiter.cooldown("m", 1.5)
    await limiter.cooldown("m", 1.5)
    state = await limiter.inspect("m")
    elapsed = time.monotonic() - began
    assert (state.requests_last_minute, state.rate_limited_last_minute) == (3, 2)
    assert state.cooldown == pytest.approx(1.5, abs=0.1)
    assert (state.configured_rpm, state.configured_tpm, state.source) == (600, 60_000, "configured")
    # 3 of 10 requests and 30 of 1,000 tokens taken, refilled at 10 and 1,000 a second since the first
    # (a loaded machine may take a good part of a second over these calls).
    assert 7 - 0.01 <= state.request_level <= min(10, 7 + 10 * elapsed + 0.01), (state, elapsed)
    assert 970 - 1 <= state.token_level <= min(1000, 970 + 1000 * elapsed + 1), (state, elapsed)
    assert await limiter.scopes() == ["m"]


async def test_another_clients_share_is_learnt_as_a_slower_refill_that_full_buckets_do_not_undo(
    redis: AsyncRedis,
) -> None:
    # The key allows 100 requests a second over a 1 s bucket, and another client takes 30% of it.
    limiter = RateLimiter(redis)
    limit = LimitConfig(rpm=6000)
    start = time.monotonic()
    provider = RateLimits(6000, None, 1.0, start)
    provider.share(0.3, start)
    tally = {"sent": 0, "refused": 0}

    async def calls_for(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            admission = await admitted(limiter, limit)
            await asyncio.sleep(admission.wait)
            now = time.monotonic()
            refusal = provider.admit(0, now)
            tally["sent"] += 1
            tally["refused"] += refusal is not None
            left = int(provider.requests.level(now)) if provider.requests else 0
            answer = said(rpm=6000, requests_left=left)
            await limiter.observe("m", limit, answer, admission.ticket, refused=refusal is not None)

    await calls_for(6)
    learnt = (await limiter.inspect("m")).others_request_share
    assert learnt == pytest.approx(0.3, abs=0.08)
    # Both buckets fill up again while the workers are idle: a full bucket holds a whole burst at the
    # provider too, so the bursts that follow are no sign that the other client has gone.
    for _ in range(2):
        await asyncio.sleep(1.2)
        await calls_for(1)
    assert (await limiter.inspect("m")).others_request_share == pytest.approx(0.3, abs=0.08)
    assert tally["refused"] <= 0.02 * tally["sent"], tally


async def half_taken(limiter: RateLimiter, limit: LimitConfig) -> None:
    """Take half of the scope's 100-call bucket in one grant, answered exactly as believed."""
    half = await limiter.acquire("m", limit, tokens=0, requests=50, max_wait=60)
    assert half.ticket is not None
    await limiter.observe(
        "m", limit, said(rpm=600, requests_left=int(half.ticket.request_belief)), half.ticket
    )


async def test_a_shortfall_that_a_surplus_shows_was_reordering_is_given_back(limiter: RateLimiter) -> None:
    # Two calls in flight: the first shows 5 fewer left than believed, as if someone else took them;
    # the second, granted before that answer, shows the provider exactly where the bucket believed.
    # The shortfall was the first call overtaken by others in flight, not a loss.
    limit = LimitConfig(rpm=600, burst_seconds=10, spread_seconds=0)  # a bucket of 100, 10 a second
    await half_taken(limiter, limit)
    first, second = [(await admitted(limiter, limit)).ticket for _ in range(2)]
    assert first is not None and second is not None
    await limiter.observe(
        "m", limit, said(rpm=600, requests_left=math.floor(first.request_belief) - 5), first
    )
    lowered = (await limiter.inspect("m")).request_level
    await limiter.observe("m", limit, said(rpm=600, requests_left=math.floor(second.request_belief)), second)
    state = await limiter.inspect("m")
    # Kept lowered, every such reordering on a busy machine cost its capacity for good. What the
    # surplus shows beyond the tolerance (1 call here) comes back.
    assert state.request_level == pytest.approx(lowered + 4, abs=0.5)
    assert state.others_request_share < 0.001


async def test_a_passing_surplus_teaches_no_share_where_no_other_client_is(limiter: RateLimiter) -> None:
    # Calls held up on a busy machine reach the provider late: it has refilled more than the bucket
    # believed (a surplus), then the backlog lands and its count is back to the belief. Nobody else
    # took anything.
    limit = LimitConfig(rpm=600, burst_seconds=10, spread_seconds=0)  # a bucket of 100, 10 a second
    await half_taken(limiter, limit)
    for surplus in (5, 0):
        ticket = (await admitted(limiter, limit)).ticket
        assert ticket is not None
        left = math.floor(ticket.request_belief) + surplus
        await limiter.observe("m", limit, said(rpm=600, requests_left=left), ticket)
    # A share held at 0 kept the drift back down and dropped the surplus before it: 5% learnt.
    assert (await limiter.inspect("m")).others_request_share < 0.01


async def test_refusals_of_calls_admitted_under_a_configured_limit_too_high_teach_no_share(
    limiter: RateLimiter,
) -> None:
    # Configured at 40 a second where the key allows 10: the first burst of 40 goes out before any
    # answer; the key takes 10 and refuses 30. None of that is another client.
    limit = LimitConfig(rpm=2400, spread_seconds=0)
    tickets = [(await admitted(limiter, limit)).ticket for _ in range(40)]
    for n, ticket in enumerate(tickets):
        refused = n >= 10
        answer = said(rpm=600, requests_left=0 if refused else 9 - n)
        await limiter.observe("m", limit, answer, ticket, refused=refused)
    state = await limiter.inspect("m")
    # Learning from them taught a share of 75% (30 refusals): a quarter of the key's rate from then on.
    assert state.others_request_share == 0
    assert (state.rpm, state.request_capacity) == (600, 10)
    assert 0 <= state.request_level <= 3


async def test_a_late_answer_under_the_old_limit_is_netted_out_of_answers_granted_since(
    limiter: RateLimiter,
) -> None:
    limit = LimitConfig(rpm=2400, spread_seconds=0)  # 40 a second; the key allows 10
    stale = [(await admitted(limiter, limit)).ticket for _ in range(20)]
    await limiter.observe("m", limit, said(rpm=600, requests_left=9), stale[0])  # the key's limit: 10
    fresh = (await admitted(limiter, limit)).ticket
    assert fresh is not None
    # A call of the old burst lands late and shows 2 left: the bucket comes down to it ...
    await limiter.observe("m", limit, said(rpm=600, requests_left=2), stale[1])
    # ... and the call granted since shows 1 left after it: no news, as the late answer said so.
    await limiter.observe("m", limit, said(rpm=600, requests_left=1), fresh)
    state = await limiter.inspect("m")
    assert state.others_request_share == 0
    assert state.request_level >= 0


async def test_the_first_answer_stating_a_new_limit_starts_its_bucket_at_what_is_left(
    limiter: RateLimiter,
) -> None:
    limit = LimitConfig(rpm=600, spread_seconds=0)
    ticket = (await admitted(limiter, limit)).ticket
    # The key also limits input tokens: 1,000 a second, of which 500 are left.
    said_at = time.monotonic()
    await limiter.observe("m", limit, said_apart(60_000, 500, 12_000, 200), ticket)
    state = await limiter.inspect("m")
    elapsed = time.monotonic() - said_at  # refilled at 1,000 and 200 a second since
    assert 500 - 1 <= state.input_level <= 500 + 1_000 * elapsed + 1, (state, elapsed)
    assert 200 - 1 <= state.output_level <= 200 + 200 * elapsed + 1, (state, elapsed)


async def test_calls_that_used_more_input_than_estimated_are_charged_it_once(limiter: RateLimiter) -> None:
    limit = LimitConfig(itpm=60, burst_seconds=1000, spread_seconds=0)  # a bucket of 1,000, 1 a second
    estimate = TokenEstimate(prompt=200, completion=0)
    tickets = [
        (await limiter.acquire("m", limit, tokens=200, input_tokens=200, max_wait=60)).ticket
        for _ in range(2)
    ]
    feedback = LimitFeedback(limiter)
    # The provider counted 230 for each: 770 left after the first, 540 after the second.
    for ticket, left in zip(tickets, (770, 540), strict=True):
        headers = {
            "anthropic-ratelimit-input-tokens-limit": "60",
            "anthropic-ratelimit-input-tokens-remaining": str(left),
        }
        await feedback.answered(
            "m", limit, ticket, headers, estimate=estimate, used=230, sets_max_tokens=False, used_prompt=230
        )
    # Its own shortfall taken off twice (by the headers and by the usage) left it at 480 or 510.
    assert (await limiter.inspect("m")).input_level == pytest.approx(540, abs=5)


# --- input and output tokens limited apart (Anthropic's ITPM and OTPM) ---


def said_apart(itpm: float, input_left: float, otpm: float, output_left: float) -> ProviderLimits:
    """Anthropic's headers: input and output limits, and ``tokens`` stating the tighter of the two."""
    return ProviderLimits(
        "anthropic",
        requests=Reading(limit=600, remaining=9),
        tokens=Reading(limit=otpm, remaining=output_left),
        input_tokens=Reading(limit=itpm, remaining=input_left),
        output_tokens=Reading(limit=otpm, remaining=output_left),
    )


async def test_input_and_output_limits_are_each_a_bucket_of_their_own(limiter: RateLimiter) -> None:
    # 10 input and 2 output tokens a second, in buckets of one second.
    limit = LimitConfig(itpm=600, otpm=120, spread_seconds=0)
    first = await limiter.acquire("m", limit, tokens=6, input_tokens=4, output_tokens=2, max_wait=60)
    assert (first.admitted, first.wait) == (True, 0)
    assert first.ticket is not None and (first.ticket.input_charged, first.ticket.output_charged) == (4, 2)
    # The output bucket is empty: one more output token waits half a second, input has room.
    second = await limiter.acquire("m", limit, tokens=2, input_tokens=1, output_tokens=1, max_wait=0)
    assert not second.admitted and second.wait == pytest.approx(0.5, abs=CLOSE)
    # A prompt bigger than what is left of the input bucket waits for input.
    third = await limiter.acquire("m", limit, tokens=9, input_tokens=9, output_tokens=0, max_wait=0)
    assert not third.admitted and third.wait == pytest.approx(0.3, abs=CLOSE)
    state = await limiter.inspect("m")
    assert (state.state, state.source) == ("limited", "configured")
    assert (state.itpm, state.otpm, state.tpm) == (600, 120, 0)
    assert state.input_level == pytest.approx(6, abs=2) and state.output_capacity == 2


async def test_answers_give_back_what_the_call_did_not_use_of_input_and_output(limiter: RateLimiter) -> None:
    limit = LimitConfig(itpm=60, otpm=60, burst_seconds=100, spread_seconds=0)  # buckets of 100, 1 a second
    admission = await limiter.acquire("m", limit, tokens=80, input_tokens=20, output_tokens=60, max_wait=60)
    await limiter.adjust("m", limit, tokens=0, input_tokens=2, output_tokens=55, ticket=admission.ticket)
    state = await limiter.inspect("m")
    assert state.input_level == pytest.approx(82, abs=1) and state.output_level == pytest.approx(95, abs=1)
    # A 429 or a failure gives back all of both.
    admission = await limiter.acquire("m", limit, tokens=80, input_tokens=20, output_tokens=60, max_wait=60)
    await limiter.refund("m", limit, admission.ticket)
    state = await limiter.inspect("m")
    assert state.input_level == pytest.approx(82, abs=1) and state.output_level == pytest.approx(95, abs=1)


async def test_input_and_output_limits_are_learnt_from_anthropic_headers_not_their_tighter_tokens(
    limiter: RateLimiter,
) -> None:
    await limiter.observe("m", None, said_apart(80_000, 80_000, 16_000, 16_000), None)
    learnt = await limiter.observe("m", None, said_apart(80_000, 80_000, 16_000, 16_000), None)
    # "tokens" states the tighter of the two (16,000): learnt as a combined limit it would hold the
    # input to 16,000 a minute as well.
    assert (learnt.itpm, learnt.otpm, learnt.tpm, learnt.rpm) == (80_000, 16_000, 0, 600)
    state = await limiter.inspect("m")
    assert (state.state, state.source) == ("limited", "learnt")
    assert (state.tpm, state.itpm, state.otpm) == (0, 80_000, 16_000)
    admission = await limiter.acquire(
        "m", None, tokens=5000, input_tokens=4000, output_tokens=1000, max_wait=0
    )
    assert admission.admitted and admission.wait == 0


async def test_input_left_below_what_the_bucket_believes_lowers_it_at_once(limiter: RateLimiter) -> None:
    limit = LimitConfig(itpm=600, otpm=600, burst_seconds=100, spread_seconds=0)  # buckets of 1000
    admission = await limiter.acquire("m", limit, tokens=110, input_tokens=100, output_tokens=10, max_wait=60)
    # The provider says 500 input tokens are left where the bucket believes 900: another program uses
    # the key. Output is as believed.
    await limiter.observe("m", limit, said_apart(600, 500, 600, 990), admission.ticket)
    state = await limiter.inspect("m")
    assert state.input_level == pytest.approx(500, abs=15)
    assert state.output_level == pytest.approx(990, abs=15)


async def test_an_answer_reconciles_input_and_output_with_its_usage_whatever_the_family(
    limiter: RateLimiter,
) -> None:
    limit = LimitConfig(itpm=60, otpm=60, burst_seconds=100, spread_seconds=0)  # buckets of 100
    estimate = TokenEstimate(prompt=30, completion=60)
    admission = await limiter.acquire(
        "m", limit, tokens=estimate.total, input_tokens=30, output_tokens=60, max_wait=60
    )
    feedback = LimitFeedback(limiter)
    # OpenAI's headers and max_tokens set: the combined bucket keeps its up-front charge, but input
    # and output are what the provider counted: 34 in (more than estimated), 5 out of the 60 asked.
    await feedback.answered(
        "m",
        limit,
        admission.ticket,
        {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"},
        estimate=estimate,
        used=39,
        sets_max_tokens=True,
        used_prompt=34,
        used_completion=5,
    )
    state = await limiter.inspect("m")
    assert state.input_level == pytest.approx(100 - 34, abs=1)
    assert state.output_level == pytest.approx(100 - 5, abs=1)
