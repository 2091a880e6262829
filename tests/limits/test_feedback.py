"""A worker's side of the limiter (LimitFeedback): what each answer gives back and teaches, Anthropic's
input and output limits, unlimited scopes. On fakeredis and a real Redis, with the test's clock."""

from typing import Any

import pytest

from llmqueue.limits.feedback import LimitFeedback
from llmqueue.limits.headers import ProviderLimits, Reading
from llmqueue.limits.limiter import Admission, RateLimiter, Reservation
from llmqueue.limits.tokens import TokenEstimate
from llmqueue.settings import LimitConfig

OPENAI_HEADERS = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"}


async def admitted(limiter: RateLimiter, limit: LimitConfig | None, **want: int) -> Reservation:
    admission: Admission = await limiter.acquire([("m", limit)], max_wait=60, **want)
    assert admission.admitted and admission.reservation is not None, admission
    return admission.reservation


def anthropic(itpm: float, input_left: float, otpm: float, output_left: float) -> dict[str, str]:
    """Anthropic's headers: input and output limits, and ``tokens`` stating the tighter of the two."""
    said = {"requests": (600, 599), "input-tokens": (itpm, input_left), "output-tokens": (otpm, output_left)}
    said["tokens"] = min(said["input-tokens"], said["output-tokens"], key=lambda pair: pair[1])
    headers = {}
    for kind, (limit, left) in said.items():
        headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{kind}-remaining"] = str(left)
    return headers


async def test_a_scope_whose_provider_states_no_limit_is_unlimited_and_costs_no_round_trips(
    limiter: RateLimiter,
) -> None:
    settled: list[Any] = []  # what each settlement sent to Redis said the provider stated
    run = limiter._run

    async def counted(op: str, script_keys: list[str], arguments: dict[str, Any]) -> Any:
        if op == "settle":
            settled.append(arguments.get("said"))
        return await run(op, script_keys, arguments)

    limiter._run = counted  # type: ignore[method-assign]
    feedback = LimitFeedback(limiter)
    assert feedback.needs_estimate("m", None)  # nothing heard yet: a token limit may exist

    async def one_call(headers: dict[str, str]) -> Admission:
        admission = await limiter.acquire([("m", None)], max_wait=0)
        assert admission.reservation is not None
        feedback.admitted("m", admission)
        await feedback.answered(admission.reservation, headers, used=5, sets_max_tokens=False)
        return admission

    first = await one_call({})  # probing: the first answer without headers marks the scope unlimited
    assert first.state == "probing"
    for _ in range(5):
        assert (await one_call({})).state == "unlimited"
    assert settled == [None]
    assert not feedback.needs_estimate("m", None)
    await one_call(OPENAI_HEADERS)
    await one_call({})  # limited now: every answer is told again
    assert len(settled) == 3 and settled[1] is not None
    state = await limiter.inspect("m")
    assert (state.state, state.learnt_rpm, state.source) == ("limited", 600, "learnt")


async def test_openai_with_max_tokens_keeps_its_up_front_charge_else_usage_is_given_back(
    limiter: RateLimiter,
) -> None:
    limit = LimitConfig(tpm=600, burst_seconds=100, spread_seconds=0)  # 1,000 tokens at once, 10 a second
    feedback = LimitFeedback(limiter)
    estimate = TokenEstimate(prompt=100, completion=400)
    up_front = await admitted(limiter, limit, tokens=estimate.total)
    await feedback.answered(up_front, OPENAI_HEADERS, used=120, sets_max_tokens=True)
    assert (await limiter.inspect("m")).token_level == pytest.approx(500)
    counted = await admitted(limiter, limit, tokens=estimate.total)
    await feedback.answered(counted, OPENAI_HEADERS, used=120, sets_max_tokens=False)
    assert (await limiter.inspect("m")).token_level == pytest.approx(380)


async def test_a_429_gives_back_its_tokens_and_keeps_its_request(limiter: RateLimiter) -> None:
    limit = LimitConfig(rpm=60, tpm=600, burst_seconds=100, spread_seconds=0)
    feedback = LimitFeedback(limiter)
    reservation = await admitted(limiter, limit, tokens=300)
    await feedback.rate_limited(reservation, {})
    state = await limiter.inspect("m")
    assert (state.token_level, state.request_level) == (pytest.approx(1000), pytest.approx(99))


async def test_input_and_output_limits_are_each_a_dimension_of_their_own(limiter: RateLimiter) -> None:
    limit = LimitConfig(itpm=600, otpm=120, spread_seconds=0)  # 10 input and 2 output tokens a second
    first = await limiter.acquire([("m", limit)], tokens=6, input_tokens=4, output_tokens=2, max_wait=60)
    assert (first.admitted, first.wait) == (True, 0)
    assert first.reservation is not None and first.reservation.taken == {
        "i": 4,
        "o": 2,
    }  # only the limited dimensions
    more_output = await limiter.acquire([("m", limit)], tokens=2, input_tokens=1, output_tokens=1, max_wait=0)
    assert not more_output.admitted and more_output.wait == pytest.approx(0.5)
    more_input = await limiter.acquire([("m", limit)], tokens=9, input_tokens=9, max_wait=0)
    assert not more_input.admitted and more_input.wait == pytest.approx(0.3)
    state = await limiter.inspect("m")
    assert (state.itpm, state.otpm, state.tpm, state.source) == (600, 120, 0, "configured")
    assert (state.input_level, state.output_capacity) == (pytest.approx(6), 2)


async def test_anthropic_limits_are_learnt_apart_not_from_their_tighter_tokens_figure(
    limiter: RateLimiter,
) -> None:
    feedback = LimitFeedback(limiter)
    probe = await admitted(limiter, None)
    await feedback.answered(
        probe,
        anthropic(80_000, 80_000, 16_000, 16_000),
        used=0,
        sets_max_tokens=False,
    )
    state = await limiter.inspect("m")
    # "tokens" states the tighter of the two: learnt as a combined limit it would hold input to 16,000.
    assert (state.tpm, state.itpm, state.otpm, state.source) == (0, 80_000, 16_000, "learnt")
    assert (
        await limiter.acquire([("m", None)], tokens=5000, input_tokens=4000, output_tokens=1000, max_wait=0)
    ).wait == 0


async def test_answers_reconcile_input_and_output_with_usage_whatever_the_family(
    limiter: RateLimiter,
) -> None:
    limit = LimitConfig(itpm=60, otpm=60, burst_seconds=100, spread_seconds=0)  # 100 of each at once
    estimate = TokenEstimate(prompt=30, completion=60)
    reservation = await admitted(limiter, limit, tokens=estimate.total, input_tokens=30, output_tokens=60)
    # OpenAI's headers and max_tokens set, yet input and output are what the provider counted.
    await LimitFeedback(limiter).answered(
        reservation,
        OPENAI_HEADERS,
        used=39,
        sets_max_tokens=True,
        used_prompt=34,
        used_completion=5,
    )
    state = await limiter.inspect("m")
    assert (state.input_level, state.output_level) == (pytest.approx(66), pytest.approx(95))


async def test_input_left_below_what_the_scope_believes_lowers_it_at_once(limiter: RateLimiter) -> None:
    limit = LimitConfig(itpm=600, otpm=600, burst_seconds=100, spread_seconds=0)  # 1,000 of each at once
    reservation = await admitted(limiter, limit, tokens=110, input_tokens=100, output_tokens=10)
    said = ProviderLimits(
        "anthropic",
        input_tokens=Reading(limit=600, remaining=500),  # another program uses the key
        output_tokens=Reading(limit=600, remaining=990),
    )
    await reservation.answered(said, {})
    state = await limiter.inspect("m")
    assert (state.input_level, state.output_level) == (pytest.approx(500), pytest.approx(990))


async def test_a_configured_limit_above_the_providers_is_warned_of_once(
    limiter: RateLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    limit = LimitConfig(rpm=6000, spread_seconds=0)
    feedback = LimitFeedback(limiter)
    for _ in range(2):
        reservation = await admitted(limiter, limit)
        await feedback.answered(reservation, OPENAI_HEADERS, used=0, sets_max_tokens=False)
    warnings = [r.getMessage() for r in caplog.records if "above the provider's own limit" in r.getMessage()]
    assert warnings == [
        "scope 'm': the configured rpm (6000) is above the provider's own limit (600); the provider's is used"
    ]
