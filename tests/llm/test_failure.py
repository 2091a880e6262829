"""The failure policy: (error, attempt, fallback chain, retry policy) → reroute / retry / fallback / fail,
and the scope pause a 429 sets. A table of cases, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llmqueue.errors import PermanentProviderError, ProviderError, RateLimitedError, RetryableProviderError
from llmqueue.llm.backoff import RetryPolicy
from llmqueue.llm.failure import DEFAULT_COOLDOWN, FailureDecision, decide, moves_on_before_call

# The lone-job schedule: clamp(0.5 * 2^(n-1), 1, 4) → 1, 1, 2, 4.
SEED = RetryPolicy(num_retries=4, min_wait=1.0, max_wait=4.0, multiplier=0.5)
FAST = RetryPolicy(num_retries=2, min_wait=0.1, max_wait=0.4, multiplier=0.1)


def rate_limited(retry_after: float | None = None) -> RateLimitedError:
    return RateLimitedError("429", retry_after=retry_after)


def server_error() -> RetryableProviderError:
    return RetryableProviderError("503", kind="server_error", status_code=503)


def too_large() -> PermanentProviderError:
    return PermanentProviderError("too large", kind="request_too_large", status_code=429)


def bad_request() -> PermanentProviderError:
    return PermanentProviderError("400", kind="bad_request", status_code=400)


@dataclass(frozen=True)
class Case:
    name: str
    error: ProviderError
    attempt: int
    expected: FailureDecision
    policy: RetryPolicy = SEED
    fallbacks: tuple[str, ...] = ()
    moved_on: int = 0
    reroutable: bool = False


CASES = [
    # A lone job answered 429 without retry-after follows the seed's schedule exactly, and the scope
    # pause never outlasts the job's own delay.
    Case("429 first retry", rate_limited(), 1, FailureDecision("retry", delay=1.0, scope_pause=1.0)),
    Case("429 second retry", rate_limited(), 2, FailureDecision("retry", delay=1.0, scope_pause=1.0)),
    Case("429 third retry", rate_limited(), 3, FailureDecision("retry", delay=2.0, scope_pause=1.0)),
    Case("429 fourth retry", rate_limited(), 4, FailureDecision("retry", delay=4.0, scope_pause=1.0)),
    Case(
        "429 short delay: pause no longer than the delay",
        rate_limited(),
        1,
        FailureDecision("retry", delay=0.1, scope_pause=0.1),
        policy=FAST,
    ),
    # retry-after raises the job's delay (within max_wait) and sets the scope's pause.
    Case(
        "429 retry-after above the schedule",
        rate_limited(3.0),
        1,
        FailureDecision("retry", delay=3.0, scope_pause=3.0),
    ),
    Case(
        "429 retry-after above max_wait: the delay stays within it",
        rate_limited(10.0),
        1,
        FailureDecision("retry", delay=4.0, scope_pause=10.0),
    ),
    Case(
        "429 retry-after below the schedule keeps the schedule",
        rate_limited(0.5),
        3,
        FailureDecision("retry", delay=2.0, scope_pause=0.5),
    ),
    Case(
        "429 retries spent: fail, scope still paused",
        rate_limited(),
        5,
        FailureDecision("fail", scope_pause=DEFAULT_COOLDOWN),
    ),
    Case(
        "429 retries spent: fallback at once",
        rate_limited(),
        5,
        FailureDecision("fallback", fallback="b", fallback_number=1, scope_pause=DEFAULT_COOLDOWN),
        fallbacks=("b", "c"),
    ),
    Case(
        "5xx retries spent on the first fallback: the second",
        server_error(),
        5,
        FailureDecision("fallback", fallback="c", fallback_number=2),
        fallbacks=("b", "c"),
        moved_on=1,
    ),
    Case(
        "5xx retries spent on the last fallback: fail",
        server_error(),
        5,
        FailureDecision("fail"),
        fallbacks=("b", "c"),
        moved_on=2,
    ),
    Case("5xx retried without a scope pause", server_error(), 2, FailureDecision("retry", delay=1.0)),
    Case("bad request fails at once", bad_request(), 1, FailureDecision("fail")),
    Case(
        "bad request never falls back",
        bad_request(),
        1,
        FailureDecision("fail"),
        fallbacks=("b",),
    ),
    Case("request too large: fail, no scope pause", too_large(), 1, FailureDecision("fail")),
    Case(
        "reroutable: reroute, no attempt spent, no pause",
        server_error(),
        1,
        FailureDecision("reroute"),
        reroutable=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decision(case: Case) -> None:
    decision = decide(
        case.error,
        attempt_of_model=case.attempt,
        policy=case.policy,
        fallbacks=case.fallbacks,
        moved_on=case.moved_on,
        reroutable=case.reroutable,
        rand=lambda: pytest.fail("no jitter configured: rand must not be drawn"),
    )
    assert decision == case.expected


def test_a_lone_jobs_429_delays_follow_the_seed_schedule() -> None:
    delays = [decide(rate_limited(), attempt_of_model=n, policy=SEED).delay for n in (1, 2, 3, 4)]
    assert delays == [1.0, 1.0, 2.0, 4.0]


def test_jitter_is_drawn_from_the_given_randomness() -> None:
    jittery = RetryPolicy(num_retries=4, min_wait=1.0, max_wait=10.0, multiplier=2.0, jitter=0.5)
    decision = decide(server_error(), attempt_of_model=1, policy=jittery, rand=lambda: 1.0)
    assert decision == FailureDecision("retry", delay=3.0)


def test_a_retryable_error_moves_on_at_once_when_the_model_is_out_past_the_retry() -> None:
    error = RetryableProviderError("boom", kind="server_error", status_code=500)
    out = decide(error, attempt_of_model=1, policy=RetryPolicy(), fallbacks=["b"], out_for=30.0)
    stays = decide(error, attempt_of_model=1, policy=RetryPolicy(), fallbacks=["b"], out_for=1.0)

    assert (out.action, out.fallback) == ("fallback", "b")
    assert stays.action == "retry"


def test_a_429_moves_on_after_one_attempt_when_the_fallback_has_room() -> None:
    error = rate_limited()
    room = decide(error, attempt_of_model=1, policy=RetryPolicy(), fallbacks=["b"], fallback_has_room=True)
    full = decide(error, attempt_of_model=1, policy=RetryPolicy(), fallbacks=["b"], fallback_has_room=False)

    assert (room.action, room.fallback, room.scope_pause) == ("fallback", "b", DEFAULT_COOLDOWN)
    assert full.action == "retry"


@pytest.mark.parametrize(
    ("taken_out", "lately_out", "pausing", "room", "has_fallback", "moves"),
    [
        (True, True, False, False, True, True),  # taken out now
        (False, True, False, False, True, True),  # came back less than a minute ago
        (False, False, False, False, True, False),  # in service
        (False, False, True, True, True, True),  # pausing after 429s, the fallback takes calls
        (False, False, True, False, True, False),  # pausing, and so is the fallback
        (True, True, False, False, False, False),  # no fallback left
    ],
)
def test_a_job_skips_a_model_known_to_be_down_before_calling_it(
    taken_out: bool, lately_out: bool, pausing: bool, room: bool, has_fallback: bool, moves: bool
) -> None:
    decided = moves_on_before_call(
        taken_out=taken_out,
        lately_out=lately_out,
        pausing=pausing,
        fallback_has_room=room,
        has_fallback=has_fallback,
    )
    assert decided is moves
