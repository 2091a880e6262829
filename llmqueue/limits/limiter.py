"""The rate limiter every worker shares through Redis: virtual scheduling (GCRA) per scope.

A scope (a model, a key's ``limit_scope`` or a deployment) is limited in up to four dimensions:
requests, tokens, and input and output tokens apart (Anthropic's ITPM/OTPM). Each dimension keeps one
theoretical arrival time; one Lua script (``limiter.lua``, run by SHA, Redis ``TIME`` as the clock)
admits a call in every dimension at once and says when it may be sent. The rules, in words:

- A call is sent when every dimension has room for it, the scope is not cooling down after a 429,
  and no refused job of higher priority is due back. Up to ``burst_seconds`` of the rate may go at once;
  after that calls leave spaced at the rate, never two on one instant beyond the burst.
- A call that would wait longer than the caller allows takes nothing; its job is parked and told when
  to come back. Capacity given back (tokens an answer did not use, a call never sent) or a limit
  learnt higher re-schedules parked jobs at once, highest priority first (``on_wake``).
- A call larger than a minute's limit can never be sent: it is refused as ``too_large``.
- The provider's headers teach the scope its limits (the lower of configured and stated is used) and
  what is left: what it says is left caps what the scope believes (another program on the key).
- A 429 pauses the scope and empties its request bucket as of the pause's end.
- Jobs below the default priority may not take the last ``reserve`` of the burst.

:meth:`RateLimiter.acquire` returns an :class:`Admission`; an admitted call holds a
:class:`Reservation`, settled with :meth:`~Reservation.answered`, :meth:`~Reservation.refused` or
:meth:`~Reservation.cancel`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.coalesce import ScriptCoalescer
from llmqueue.limits.headers import ProviderLimits
from llmqueue.settings import LimitConfig

_SCRIPT = resources.files("llmqueue.limits").joinpath("limiter.lua").read_text(encoding="utf-8")

#: Named priorities; any integer from 0 to 9 is a priority, higher is more urgent.
PRIORITIES = {"batch": 0, "default": 1, "interactive": 2}
DEFAULT_PRIORITY = PRIORITIES["default"]
MAX_PRIORITY = 9
#: The longest reservation (seconds) a job below the default priority may hold, when one refill is shorter.
LOW_PRIORITY_HOLD = 0.1
#: Seconds a call admitted under a limit since replaced waits before it is admitted again.
REACQUIRE_DELAY = 0.01
#: Seconds the record of which scopes a batch ran in is kept after its last job started.
BATCH_SCOPES_TTL = 7 * 86400

LimitState = Literal["limited", "probing", "unlimited"]
Dimension = Literal["r", "t", "i", "o"]
#: Re-schedules parked jobs: (job id, seconds from now it may come back in).
WakeHandler = Callable[[list[tuple[str, float]]], Awaitable[None]]
_NAMES: dict[str, Dimension] = {"requests": "r", "tokens": "t", "input_tokens": "i", "output_tokens": "o"}


@dataclass(frozen=True)
class TooLarge:
    """A call that no wait can admit: ``asked`` units of ``dimension`` against a limit per minute."""

    dimension: str
    asked: float
    limit: float

    def __str__(self) -> str:
        name = next(name for name, short in _NAMES.items() if short == self.dimension).replace("_", " ")
        return f"the request needs {self.asked:g} {name} but the limit is {self.limit:g} {name} per minute"


@dataclass(frozen=True)
class Admission:
    """The limiter's answer: ``admitted`` to be sent after ``wait`` seconds, or not (nothing was taken,
    and ``wait`` says when to come back; ``too_large`` when it never can). ``state`` says whether the
    scope runs under a limit, is probing for one, or is unlimited; ``choice`` is the position among the
    candidates of the scope that answered."""

    admitted: bool
    wait: float
    state: LimitState = "limited"
    choice: int = 0
    reservation: Reservation | None = None
    too_large: TooLarge | None = None


@dataclass(frozen=True)
class Learnt:
    """The limits (per minute) the provider stated for a scope, 0 where it never stated one."""

    rpm: float = 0.0
    tpm: float = 0.0
    itpm: float = 0.0
    otpm: float = 0.0


@dataclass
class Reservation:
    """What an admitted call took from its scope, until the call is settled.

    ``taken`` is the units per dimension (``r``, ``t``, ``i``, ``o``) and ``marks`` the scope's running
    totals right after this grant: an answer's headers are compared net of what was admitted since.
    """

    limiter: RateLimiter
    scope: str
    limit: LimitConfig | None
    at: float
    """Redis time (seconds) the call may be sent at."""
    granted: float = 0.0
    """Redis time (seconds) it was admitted."""
    taken: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    async def answered(self, said: ProviderLimits | None, give_back: Mapping[str, float]) -> Learnt:
        """The provider answered: learn from its headers (``said``; None: it sent none) and give back
        ``give_back`` units per dimension (tokens it did not count; negative charges more)."""
        return await self.limiter.settle(
            self.scope, self.limit, said=said, give_back=give_back, sent=self, no_headers=said is None
        )

    async def refused(self, said: ProviderLimits | None) -> Learnt:
        """The provider answered 429: it counted nothing, so its tokens go back; its request only if
        it was admitted under a limit since replaced (else the refusal shows the key had less)."""
        return await self.limiter.settle(
            self.scope, self.limit, said=said, give_back=self.taken, sent=self, refused=True
        )

    async def pause_before_sending(self) -> float:
        """Seconds the call must still wait, 0 to send it now: a 429 seen since it was admitted pauses
        it, and a limit learnt since voids it (it was admitted at another rate) for a moment."""
        reply = await self.limiter._run("cooldown", [keys.limiter(self.scope)], {"seconds": 0})
        if reply["left"] > 0:
            return float(reply["left"])
        return REACQUIRE_DELAY if float(reply["limits_set"]) > self.granted else 0.0

    async def cancel(self) -> Learnt:
        """The call was not sent: everything it took goes back (the request too, unless a 429
        cooldown covers its time: the provider's bucket is empty then)."""
        return await self.limiter.settle(self.scope, self.limit, give_back=self.taken)


@dataclass(frozen=True)
class ScopeState:
    """A scope as the workers see it now (``llmqueue limits``); rates per minute, 0 for none."""

    scope: str
    state: LimitState
    rpm: float
    tpm: float
    configured_rpm: float
    configured_tpm: float
    learnt_rpm: float
    learnt_tpm: float
    request_level: float
    request_capacity: float
    token_level: float
    token_capacity: float
    cooldown: float
    others_request_share: float
    """The share of the request rate the provider's headers showed another client taking (the last
    ten seconds or so)."""
    requests_last_minute: int
    rate_limited_last_minute: int
    itpm: float = 0.0
    """Input tokens per minute (Anthropic's ITPM), 0 for none; the same for output below."""
    otpm: float = 0.0
    configured_itpm: float = 0.0
    configured_otpm: float = 0.0
    learnt_itpm: float = 0.0
    learnt_otpm: float = 0.0
    input_level: float = 0.0
    input_capacity: float = 0.0
    output_level: float = 0.0
    output_capacity: float = 0.0

    @property
    def source(self) -> str:
        """``configured``, ``learnt``, ``both`` or ``none``: where the scope's limits come from now."""
        configured = max(self.configured_rpm, self.configured_tpm, self.configured_itpm, self.configured_otpm)
        learnt = max(self.learnt_rpm, self.learnt_tpm, self.learnt_itpm, self.learnt_otpm)
        return {(True, True): "both", (True, False): "configured", (False, True): "learnt"}.get(
            (configured > 0, learnt > 0), "none"
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["source"] = self.source
        return data


class RateLimiter:
    """Shared limits, one set per scope, kept in Redis.

    ``clock`` (tests) gives the script its "now" in seconds instead of Redis ``TIME``; ``on_wake``
    re-schedules parked jobs (the worker's queue); ``coalescer`` shares round trips between calls.
    """

    def __init__(
        self,
        redis: Redis,
        coalescer: ScriptCoalescer | None = None,
        *,
        clock: Callable[[], float] | None = None,
        on_wake: WakeHandler | None = None,
    ) -> None:
        self._redis = redis
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
        apart) on whichever candidate scope can send it soonest, if within ``max_wait`` seconds.

        Admitted, the caller sleeps ``Admission.wait`` and sends; refused, nothing was taken, and
        ``job_id`` (if given) is parked to be re-scheduled when capacity comes back. ``priority`` is 0-9,
        higher more urgent (:data:`PRIORITIES`).
        """
        if not candidates:
            raise ValueError("acquire needs at least one candidate scope")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be an integer from 0 to {MAX_PRIORITY}, not {priority!r}")
        for scope, _ in candidates:
            await self._remember(scope)
        want = {"r": 1, "t": tokens, "i": input_tokens, "o": output_tokens}
        arguments: dict[str, Any] = {
            "limits": [_limit_json(limit) for _, limit in candidates],
            "want": want,
            "max_wait": max_wait,
            "priority": priority,
            "hold": LOW_PRIORITY_HOLD,
        }
        if job_id is not None:
            arguments["job"] = job_id
        scopes = [scope for scope, _ in candidates]
        reply = await self._run(
            "acquire", [*map(keys.limiter, scopes), *map(keys.limiter_parked, scopes)], arguments
        )
        choice = int(reply["choice"]) - 1
        scope, limit = candidates[choice]
        state = _state(reply["state"])
        if "too_large" in reply:
            return Admission(False, 0.0, state, choice, too_large=TooLarge(**reply["too_large"]))
        if not reply["admitted"]:
            return Admission(False, float(reply["wait"]), state, choice)
        marks = reply.get("marks") or {}
        taken = {d: float(q) for d, q in want.items() if d in marks}
        reservation = Reservation(
            self, scope, limit, float(reply["at"]), float(reply["granted"]), taken, _floats(marks)
        )
        return Admission(True, max(0.0, float(reply["wait"])), state, choice, reservation)

    async def settle(
        self,
        scope: str,
        limit: LimitConfig | None,
        *,
        said: ProviderLimits | None = None,
        give_back: Mapping[str, float] | None = None,
        sent: Reservation | None = None,
        refused: bool = False,
        no_headers: bool = False,
        max_wait: float = 2.0,
    ) -> Learnt:
        """Report the outcome of the call ``sent`` (see :class:`Reservation`, which calls this); wakes
        parked jobs that can now go sooner."""
        arguments: dict[str, Any] = {"limit": _limit_json(limit), "max_wait": max_wait}
        if said is not None:
            arguments["said"] = _said_json(said)
        if give_back:
            arguments["give"] = {d: q for d, q in give_back.items() if q}
        if sent is not None and sent.marks:
            arguments.update(marks=sent.marks, at=sent.at, granted=sent.granted)
        if refused:
            arguments["refused"] = True
        if no_headers:
            arguments["no_headers"] = True
        reply = await self._run("settle", [keys.limiter(scope), keys.limiter_parked(scope)], arguments)
        woken = [(str(job), float(at)) for job, at in (reply.get("woken") or [])]
        if woken and self.on_wake is not None:
            await self.on_wake(woken)
        learnt = reply["learnt"]
        return Learnt(learnt["r"], learnt["t"], learnt["i"], learnt["o"])

    async def cooldown(
        self, scope: str, seconds: float, *, longest: float = 0.0, rate_limited: bool = True
    ) -> float:
        """Pause the whole scope for ``seconds`` (a 429 seen by one worker); returns the pause left.

        ``seconds=0`` only reads how much of the current pause is left. With ``longest`` (a deployment
        taken out by the circuit breaker) a pause soon after the last one ended doubles, up to
        ``longest``. ``rate_limited=False``: the pause is not counted among the scope's 429s.
        """
        arguments = {"seconds": seconds, "longest": longest, "counted": rate_limited}
        reply = await self._run("cooldown", [keys.limiter(scope)], arguments)
        return float(reply["left"])

    async def inspect(self, scope: str) -> ScopeState:
        """The scope's limits in force, their source, levels, cooldown and last-minute counts. A
        configured limit shows while workers acquire with it (within the last minute)."""
        s = await self._run("inspect", [keys.limiter(scope)], {})
        rpm = float(s["r"])
        return ScopeState(
            scope=scope,
            state=_state(s["state"]),
            rpm=rpm,
            tpm=float(s["t"]),
            configured_rpm=float(s["cr"]),
            configured_tpm=float(s["ct"]),
            learnt_rpm=float(s["lr"]),
            learnt_tpm=float(s["lt"]),
            request_level=float(s["rlevel"]),
            request_capacity=float(s["rcapacity"]),
            token_level=float(s["tlevel"]),
            token_capacity=float(s["tcapacity"]),
            cooldown=float(s["cooldown"]),
            others_request_share=min(1.0, float(s["others"]) / rpm) if rpm else 0.0,
            requests_last_minute=int(s["requests_last_minute"]),
            rate_limited_last_minute=int(s["rate_limited_last_minute"]),
            itpm=float(s["i"]),
            otpm=float(s["o"]),
            configured_itpm=float(s["ci"]),
            configured_otpm=float(s["co"]),
            learnt_itpm=float(s["li"]),
            learnt_otpm=float(s["lo"]),
            input_level=float(s["ilevel"]),
            input_capacity=float(s["icapacity"]),
            output_level=float(s["olevel"]),
            output_capacity=float(s["ocapacity"]),
        )

    async def scopes(self) -> list[str]:
        """Every scope a worker has acquired from (while its buckets are kept), sorted."""
        members = await self._redis.smembers(keys.limit_scopes())
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def note_batch_scope(self, batch_id: str, scope: str) -> None:
        """Record that jobs of ``batch_id`` run in ``scope`` (kept as long as a queued job)."""
        key = keys.batch_scopes(batch_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, scope)
            pipe.expire(key, BATCH_SCOPES_TTL)
            await pipe.execute()

    async def batch_scopes(self, batch_id: str) -> list[str]:
        """The scopes jobs of ``batch_id`` ran in, sorted."""
        members = await self._redis.smembers(keys.batch_scopes(batch_id))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def exists(self, scope: str) -> bool:
        """Whether the scope's state is kept (a worker used it within the last hour)."""
        return bool(await self._redis.exists(keys.limiter(scope)))

    async def _remember(self, scope: str) -> None:
        if scope not in self._known_scopes:
            await self._redis.sadd(keys.limit_scopes(), scope)
            self._known_scopes.add(scope)

    async def _run(self, op: str, script_keys: list[str], arguments: dict[str, Any]) -> dict[str, Any]:
        now = "" if self._clock is None else repr(self._clock())
        raw = await self._script(keys=script_keys, args=[op, now, json.dumps(arguments)])
        reply: dict[str, Any] = json.loads(raw)
        return reply


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}


def _limit_json(limit: LimitConfig | None) -> dict[str, float]:
    if limit is None:
        return {}
    rates = {"r": limit.rpm, "t": limit.tpm, "i": limit.itpm, "o": limit.otpm}
    shape = {d: rate for d, rate in rates.items() if rate}
    return {**shape, "burst": limit.burst_seconds, "reserve": limit.reserve, "spread": limit.spread_seconds}


def _said_json(said: ProviderLimits) -> dict[str, dict[str, float]]:
    """The provider's stated limits and what it says is left, per dimension. Where it states input
    and output token limits apart (Anthropic), its combined token figure is not a limit of its own."""
    split = said.input_tokens is not None or said.output_tokens is not None
    readings = {"r": said.requests, "t": None if split else said.tokens}
    readings.update({"i": said.input_tokens, "o": said.output_tokens})
    stated: dict[str, dict[str, float]] = {"limit": {}, "left": {}}
    for d, reading in readings.items():
        if reading is None:
            continue
        if reading.limit:
            stated["limit"][d] = reading.limit
        if reading.remaining is not None:
            stated["left"][d] = reading.remaining
    return {k: v for k, v in stated.items() if v}


def _state(text: str) -> LimitState:
    if text in ("limited", "probing", "unlimited"):
        return text  # type: ignore[return-value]
    raise ValueError(f"unknown limiter state {text!r}")
