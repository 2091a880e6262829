"""What a failed provider call leads to: a pure function of the error, the attempt and the retry policy.

The rules, in order:

1. **Reroute** — the call's deployment was taken out of service for this error and another one can take
   the job (``reroutable``, which the caller learns from the circuit breaker): the job goes back to the
   queue at once, and the call is not counted as an attempt.
2. **Retry** — a retryable error (timeout, connection, 5xx, 429) with retries left on the current
   model: the job runs again after ``RetryPolicy.delay`` of its attempt on that model, which the
   provider's ``retry-after`` may raise (never past ``retry_max_wait``) and nothing else does.
3. **Fallback** — a retryable error, the model's fallback chain has a model left, and either the
   retries on this model are spent, or none of the model's deployments will take calls again before
   the retry would run (``out_for``: taken out by the circuit breaker, or pausing after 429s), or the
   error is a 429 and the fallback has room (``fallback_has_room``): the job moves on to the fallback
   at once, its retries counted afresh.
4. **Fail** — anything else: permanent errors (``auth``, ``bad_request``, ``request_too_large`` …) end
   the job at once.

A 429 (``RateLimitedError``) also pauses its scope for every worker (``scope_pause``): for the
provider's ``retry-after`` when it sent one, else for a short pause (``DEFAULT_COOLDOWN`` at most, and
never longer than this job's own delay, so the pause cannot stretch the job's schedule). Other errors,
and a request too large for the limit (which holds nobody else up), pause nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from llmqueue.errors import ProviderError, RateLimitedError
from llmqueue.llm.backoff import RetryPolicy

__all__ = ["DEFAULT_COOLDOWN", "FailureAction", "FailureDecision", "decide", "moves_on_before_call"]

DEFAULT_COOLDOWN = 1.0
"""The longest scope-wide pause, in seconds, after a 429 that came without a retry-after header."""

FailureAction = Literal["reroute", "retry", "fallback", "fail"]


@dataclass(frozen=True)
class FailureDecision:
    """What to do with a job whose provider call failed.

    ``delay``: seconds before the job runs again (``retry``; 0 otherwise). ``fallback``: the model the
    job moves on to and ``fallback_number`` its 1-based place in the chain (``fallback`` only).
    ``scope_pause``: seconds every call to the call's scope pauses, or None for no pause.
    """

    action: FailureAction
    delay: float = 0.0
    fallback: str | None = None
    fallback_number: int | None = None
    scope_pause: float | None = None


def decide(
    error: ProviderError,
    *,
    attempt_of_model: int,
    policy: RetryPolicy,
    fallbacks: Sequence[str] = (),
    moved_on: int = 0,
    reroutable: bool = False,
    out_for: float = 0.0,
    fallback_has_room: bool = False,
    rand: Callable[[], float] = random.random,
) -> FailureDecision:
    """The decision for a call that failed with ``error``.

    ``attempt_of_model``: the call's number among the calls to its current model (1 for the first).
    ``fallbacks``: the job's model's fallback chain, along which the job has ``moved_on`` already.
    ``reroutable``: the circuit breaker took the call's deployment out and another can take the job.
    ``out_for``: seconds until one of the model's deployments takes calls again (0: one does now).
    ``fallback_has_room``: the next fallback takes calls now (not taken out, not pausing).
    ``rand``: the jitter's randomness (only drawn when the policy has jitter).
    """
    if reroutable:
        return FailureDecision("reroute")
    retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
    decision = _next_step(error, attempt_of_model, policy, fallbacks, moved_on, retry_after, rand)
    moves_early = out_for > decision.delay or (isinstance(error, RateLimitedError) and fallback_has_room)
    if decision.action == "retry" and moved_on < len(fallbacks) and moves_early:
        decision = FailureDecision("fallback", fallback=fallbacks[moved_on], fallback_number=moved_on + 1)
    if not isinstance(error, RateLimitedError):
        return decision
    if retry_after is not None:
        pause = retry_after
    elif decision.action == "retry":
        pause = min(DEFAULT_COOLDOWN, decision.delay)
    else:
        pause = DEFAULT_COOLDOWN
    return FailureDecision(
        decision.action,
        delay=decision.delay,
        fallback=decision.fallback,
        fallback_number=decision.fallback_number,
        scope_pause=pause,
    )


def _next_step(
    error: ProviderError,
    attempt_of_model: int,
    policy: RetryPolicy,
    fallbacks: Sequence[str],
    moved_on: int,
    retry_after: float | None,
    rand: Callable[[], float],
) -> FailureDecision:
    if not error.retryable:
        return FailureDecision("fail")
    if policy.allows_retry(attempt_of_model):
        return FailureDecision("retry", delay=policy.delay(attempt_of_model, retry_after, rand=rand))
    if moved_on < len(fallbacks):
        return FailureDecision("fallback", fallback=fallbacks[moved_on], fallback_number=moved_on + 1)
    return FailureDecision("fail")


def moves_on_before_call(
    *, taken_out: bool, lately_out: bool, pausing: bool, fallback_has_room: bool, has_fallback: bool
) -> bool:
    """Whether a job goes to its next fallback before calling its model at all (no attempt spent).

    It does when it has a fallback left and its model's deployments are known to be down: the
    circuit breaker has them all out (``taken_out``), or took every one of them out lately
    (``lately_out``: they came back less than a minute ago and have not shown they are well again);
    or when all of them pause after 429s (``pausing``) while the fallback takes calls now.
    """
    if not has_fallback:
        return False
    return taken_out or lately_out or (pausing and fallback_has_room)
