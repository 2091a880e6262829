"""The rate limiter every worker shares through Redis: virtual scheduling (GCRA) per limit scope (a
model, a key's ``limit_scope`` or a deployment), in requests, tokens, and input and output tokens apart.
One Lua script, ``limiter.lua``, whose opening comment states the rules it keeps, does the work with
Redis ``TIME`` as the clock. :meth:`RateLimiter.acquire` returns an :class:`Admission`; an admitted call
holds a :class:`Reservation` until it is settled."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.coalesce import ScriptCoalescer
from llmqueue.limits.headers import ProviderLimits
from llmqueue.limits.view import CONFIGURED_SHOWN_FOR, LimitState, ScopeState
from llmqueue.models import MAX_PRIORITY, PRIORITIES
from llmqueue.settings import LimitConfig

_SCRIPT = resources.files("llmqueue.limits").joinpath("limiter.lua").read_text(encoding="utf-8")

DEFAULT_PRIORITY = PRIORITIES["default"]
#: Seconds a call admitted under a limit since replaced waits before it is admitted again.
REACQUIRE_DELAY = 0.01
_UNITS = {"r": "requests", "t": "tokens", "i": "input tokens", "o": "output tokens"}


@dataclass(frozen=True)
class Admission:
    """``admitted`` to be sent after ``wait`` seconds, or not: nothing was taken, and ``wait`` says when to
    come back (``too_large`` says why it never can). ``choice`` is the candidate scope that answered;
    ``state`` whether it runs under a limit, probes (no answer yet), or is unlimited."""

    admitted: bool
    wait: float
    state: LimitState
    choice: int
    reservation: Reservation | None = None
    too_large: str | None = None


@dataclass(frozen=True)
class Learnt:
    """The limits (per minute) the provider stated for a scope, 0 where it never stated one."""

    rpm: float = 0.0
    tpm: float = 0.0
    itpm: float = 0.0
    otpm: float = 0.0


@dataclass
class Reservation:
    """What an admitted call took from its scope (``taken``: units per dimension ``r``, ``t``, ``i``, ``o``;
    ``at`` and ``granted``: the Redis times it may be sent and was admitted) until it is settled, once;
    settling wakes the parked jobs that can now go sooner (``on_wake``)."""

    limiter: RateLimiter
    scope: str
    limit: LimitConfig | None
    at: float
    granted: float
    taken: dict[str, float]
    marks: dict[str, float]
    """The scope's running totals at this grant: an answer's headers are compared net of later grants."""

    async def answered(self, said: ProviderLimits | None, give_back: Mapping[str, float]) -> Learnt:
        """The provider answered: learn from its headers (``said``; None: it sent none) and give back
        ``give_back`` units per dimension (tokens it did not count; negative charges more)."""
        return await self._settle(give_back, said, no_headers=said is None)

    async def refused(self, said: ProviderLimits | None) -> Learnt:
        """The provider answered 429: its tokens go back; its request only if admitted under a limit since
        replaced (else the key had less). Without headers it ends a configured scope's probe."""
        configured = bool(set(_limit_json(self.limit)) & _UNITS.keys())
        return await self._settle(self.taken, said, refused=True, no_headers=said is None and configured)

    async def failed(self) -> None:
        """The call failed otherwise: its tokens go back, its request stays taken (the provider may
        have counted it); a probe it was is over."""
        await self._settle({d: q for d, q in self.taken.items() if d != "r"})

    async def cancel(self) -> Learnt:
        """The call was not sent: everything it took goes back (the request too, unless a 429
        cooldown covers its time: the provider's bucket is empty then)."""
        return await self._settle(self.taken)

    async def pause_before_sending(self) -> float:
        """Seconds the call must still wait, 0 to send it now: a 429 seen since it was admitted pauses
        it, and a limit learnt since voids it (it was admitted at another rate) for a moment."""
        reply = await self.limiter._run("cooldown", [keys.limiter(self.scope)], {"seconds": 0})
        voided = REACQUIRE_DELAY if float(reply["limits_set"]) > self.granted else 0.0
        return float(reply["left"]) if reply["left"] > 0 else voided

    async def _settle(
        self, give_back: Mapping[str, float], said: ProviderLimits | None = None, **flags: bool
    ) -> Learnt:
        give = {d: q for d, q in give_back.items() if q}
        arguments: dict[str, Any] = {"limit": _limit_json(self.limit), "give": give, **flags}
        if said is not None:  # Where input and output are limited apart (Anthropic), "tokens" is no limit.
            split = said.input_tokens is not None or said.output_tokens is not None
            readings = {"r": said.requests, "t": None if split else said.tokens}
            readings |= {"i": said.input_tokens, "o": said.output_tokens}
            arguments["said"] = {
                "limit": {d: r.limit for d, r in readings.items() if r is not None and r.limit},
                "left": {
                    d: r.remaining for d, r in readings.items() if r is not None and r.remaining is not None
                },
            }
        if self.marks:
            arguments.update(marks=self.marks, at=self.at, granted=self.granted)
        reply = await self.limiter._run(
            "settle", [keys.limiter(self.scope), keys.limiter_parked(self.scope)], arguments
        )
        woken = [(str(job), float(at)) for job, at in (reply["woken"] or [])]
        if woken and self.limiter.on_wake is not None:
            await self.limiter.on_wake(woken)
        return Learnt(*(float(reply["learnt"][d]) for d in "rtio"))


class RateLimiter:
    """Shared limits, one set per scope, kept in Redis. ``clock`` (tests) gives the script its "now"
    instead of Redis ``TIME``; ``on_wake`` re-schedules parked jobs (job id, seconds from now)."""

    def __init__(
        self,
        redis: Redis,
        coalescer: ScriptCoalescer | None = None,
        *,
        clock: Callable[[], float] | None = None,
        on_wake: Callable[[list[tuple[str, float]]], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self._script = (coalescer or redis).register_script(_SCRIPT)
        self._clock = clock
        self.on_wake = on_wake
        self._known_scopes: set[str] = set()

    async def acquire(
        self,
        candidates: Sequence[tuple[str, LimitConfig | None]],
        *,
        tokens: int = 0,
        max_wait: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
        priority: int = DEFAULT_PRIORITY,
        job_id: str | None = None,
    ) -> Admission:
        """Admit one call of ``tokens`` (``input_tokens``/``output_tokens`` where a scope limits them
        apart) on whichever candidate scope can send it soonest, if within ``max_wait`` seconds; if not,
        ``job_id`` is parked to be re-scheduled when capacity comes back. ``priority``: 0-9, higher first."""
        if not candidates:
            raise ValueError("acquire needs at least one candidate scope")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be an integer from 0 to {MAX_PRIORITY}, not {priority!r}")
        scopes = [scope for scope, _ in candidates]
        for scope in set(scopes) - self._known_scopes:
            await self.redis.sadd(keys.limit_scopes(), scope)  # for the views (limits.view.scopes)
            self._known_scopes.add(scope)
        want = {"r": 1, "t": tokens, "i": input_tokens, "o": output_tokens}
        arguments: dict[str, Any] = {
            "limits": [_limit_json(limit) for _, limit in candidates],
            "want": want,
            "max_wait": max_wait,
            "priority": priority,
            **({"job": job_id} if job_id is not None else {}),
        }
        reply = await self._run(
            "acquire", [*map(keys.limiter, scopes), *map(keys.limiter_parked, scopes)], arguments
        )
        choice = int(reply["choice"]) - 1
        scope, limit = candidates[choice]
        if "too_large" in reply:
            d, asked, most = (reply["too_large"][k] for k in ("dimension", "asked", "limit"))
            why = f"the request needs {asked:g} {_UNITS[d]} but the limit is {most:g} {_UNITS[d]} per minute"
            return Admission(False, 0.0, reply["state"], choice, too_large=why)
        if not reply["admitted"]:
            return Admission(False, float(reply["wait"]), reply["state"], choice)
        marks = {d: float(total) for d, total in (reply["marks"] or {}).items()}
        taken = {d: float(q) for d, q in want.items() if d in marks}
        at, granted = float(reply["at"]), float(reply["granted"])
        reservation = Reservation(self, scope, limit, at, granted, taken, marks)
        return Admission(True, max(0.0, float(reply["wait"])), reply["state"], choice, reservation)

    async def cooldown(
        self, scope: str, seconds: float, *, longest: float = 0.0, rate_limited: bool = True
    ) -> float:
        """Pause the whole scope for ``seconds`` (0: only read what is left); returns the pause left. A
        pause soon after the last one ended doubles, up to ``longest``. ``rate_limited=False``: the pause
        is not counted among the scope's 429s (a deployment taken out by the circuit breaker)."""
        arguments = {"seconds": seconds, "longest": longest, "counted": rate_limited}
        reply = await self._run("cooldown", [keys.limiter(scope)], arguments)
        return float(reply["left"])

    async def inspect(self, scope: str) -> ScopeState:
        """The scope as the workers see it now (see :class:`~llmqueue.limits.view.ScopeState`)."""
        reply = await self._run("inspect", [keys.limiter(scope)], {"fresh": CONFIGURED_SHOWN_FOR})
        return ScopeState.from_script(scope, reply)

    async def _run(self, op: str, script_keys: list[str], arguments: dict[str, Any]) -> dict[str, Any]:
        now = "" if self._clock is None else repr(self._clock())
        reply = await self._script(keys=script_keys, args=[op, now, json.dumps(arguments)])
        return cast(dict[str, Any], json.loads(reply))


def _limit_json(limit: LimitConfig | None) -> dict[str, float]:
    if limit is None:
        return {}
    rates = {"r": limit.rpm, "t": limit.tpm, "i": limit.itpm, "o": limit.otpm}
    shape = {d: rate for d, rate in rates.items() if rate}
    return {**shape, "burst": limit.burst_seconds, "reserve": limit.reserve, "spread": limit.spread_seconds}
