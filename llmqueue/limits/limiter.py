"""A token-bucket rate limiter shared by every worker through Redis, taught by the provider's headers.

Each limit scope has two buckets, requests and tokens, refilled continuously at ``rpm/60`` and
``tpm/60`` per second up to a capacity of ``burst_seconds`` of the rate, and two more where the provider
limits input and output tokens apart (``itpm``/``otpm``, as Anthropic does). One Lua script
(``limiter.lua``, run by SHA) checks and takes them all atomically with Redis ``TIME`` as the clock,
so workers on many machines never oversubscribe a scope together.

The rate of a bucket is the configured one, the one the provider states in its headers
(:meth:`RateLimiter.observe`), or the lower of the two. What the provider says is left lowers a bucket
that believes it holds more. A request shortfall that goes on is another client on the key: its share
of the rate is learnt and the request bucket refills that much slower. A token shortfall is a provider
counting tokens its own way: the ratio between its count and the workers' estimate is learnt and
charged from then on. A scope with neither a configured nor a learnt limit lets a few calls through to
read the headers ("probing"); if the provider states no limit it is "unlimited", and only 429 cooldowns apply.

Priorities are integers 0-9, higher is more urgent (:data:`PRIORITIES`). A job below the default
priority may not take the scope's ``reserve`` (the last part of the bucket) nor hold a reservation
longer than about one refill, and no job is admitted while a refused job of higher priority is due back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.coalesce import ScriptCoalescer
from llmqueue.limits.headers import ProviderLimits
from llmqueue.settings import LimitConfig

_SCRIPT = resources.files("llmqueue.limits").joinpath("limiter.lua").read_text(encoding="utf-8")
UNLIMITED = LimitConfig()

#: Named priorities; any integer from 0 to 9 is a priority, higher is more urgent.
PRIORITIES = {"batch": 0, "default": 1, "interactive": 2}
DEFAULT_PRIORITY = PRIORITIES["default"]
MAX_PRIORITY = 9
#: The longest reservation (seconds) a job below the default priority may hold, when one refill is shorter.
LOW_PRIORITY_HOLD = 0.1

#: Seconds a call whose reservation a 429 made stale waits before it takes a new one.
REACQUIRE_DELAY = 0.01
#: Seconds the record of which scopes a batch ran in is kept after its last job started.
BATCH_SCOPES_TTL = 7 * 86400

LimitState = Literal["limited", "probing", "unlimited"]
_NO_TICKET = -1e300


@dataclass(frozen=True)
class Ticket:
    """What an admitted call took, and what the bucket believed was left when it went out.

    Passed back to :meth:`RateLimiter.observe` with the provider's headers for that call, so the two
    counts can be compared. ``*_charged`` is this call's charge (its estimate times the learnt factor),
    ``*_granted`` and ``*_estimated`` the scope's running totals charged and estimated when it was taken.
    """

    requests_charged: float
    tokens_charged: float
    request_belief: float
    token_belief: float
    request_corrections: float
    token_corrections: float
    requests_granted: float
    tokens_granted: float
    requests_estimated: float
    tokens_estimated: float
    tokens_asked: int
    granted_at: float = 0.0
    """Redis time of the grant, seconds."""
    input_charged: float = 0.0
    output_charged: float = 0.0
    input_belief: float = _NO_TICKET
    output_belief: float = _NO_TICKET
    input_corrections: float = 0.0
    output_corrections: float = 0.0

    def args(self) -> list[float]:
        return [
            self.request_belief,
            self.token_belief,
            self.request_corrections,
            self.token_corrections,
            self.requests_granted,
            self.tokens_granted,
            self.requests_estimated,
            self.tokens_estimated,
        ]

    def split_args(self) -> list[float]:
        """The input and output token part of the ticket, as ``observe`` takes it."""
        return [self.input_belief, self.output_belief, self.input_corrections, self.output_corrections]


@dataclass(frozen=True)
class Admission:
    """The limiter's answer: ``admitted`` after sleeping ``wait`` seconds, or not admitted at all.

    When not admitted nothing was taken, and ``wait`` is how long until the request could be. ``state``
    says whether the scope ran under a limit, was probing for one, or is unlimited; ``ticket`` is set
    for a call admitted under a limit. ``choice`` is the position of the scope that answered among the
    candidates of :meth:`RateLimiter.acquire_any` (0 for :meth:`RateLimiter.acquire`).
    """

    admitted: bool
    wait: float
    state: LimitState = "limited"
    ticket: Ticket | None = None
    choice: int = 0


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
    """The share of the request rate another client on the key was seen to take (0 to 0.75)."""
    token_factor: float
    """What the provider counts per token the workers estimate (1 to 4)."""
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
        """``configured``, ``learnt``, ``both`` or ``none``: where the scope's limits come from."""
        configured = max(self.configured_rpm, self.configured_tpm, self.configured_itpm, self.configured_otpm)
        learnt = max(self.learnt_rpm, self.learnt_tpm, self.learnt_itpm, self.learnt_otpm)
        return {(True, True): "both", (True, False): "configured", (False, True): "learnt"}.get(
            (configured > 0, learnt > 0), "none"
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["source"] = self.source
        return data


@dataclass(frozen=True)
class BucketShape:
    """The configured part of a scope's limit, as the script takes it."""

    rpm: float
    tpm: float
    itpm: float
    otpm: float
    burst_seconds: float
    reserve: float
    spread_seconds: float

    @classmethod
    def of(cls, limit: LimitConfig) -> BucketShape:
        return cls(
            rpm=limit.rpm or 0.0,
            tpm=limit.tpm or 0.0,
            itpm=limit.itpm or 0.0,
            otpm=limit.otpm or 0.0,
            burst_seconds=limit.burst_seconds,
            reserve=limit.reserve,
            spread_seconds=limit.spread_seconds,
        )

    def args(self) -> list[Any]:
        return [
            self.rpm,
            self.tpm,
            self.itpm,
            self.otpm,
            self.burst_seconds,
            self.reserve,
            self.spread_seconds,
        ]


@dataclass(frozen=True)
class Learnt:
    """The limits (per minute) the provider stated for a scope, 0 where it never stated one."""

    rpm: float = 0.0
    tpm: float = 0.0
    itpm: float = 0.0
    otpm: float = 0.0


class RateLimiter:
    """Shared request and token buckets, one set per scope, kept in Redis."""

    def __init__(self, redis: Redis, coalescer: ScriptCoalescer | None = None) -> None:
        """With ``coalescer`` (a worker's), calls made together share a round trip."""
        self._redis = redis
        self._script = (coalescer or redis).register_script(_SCRIPT)
        self._known_scopes: set[str] = set()

    async def acquire(
        self,
        scope: str,
        limit: LimitConfig | None,
        *,
        tokens: int,
        max_wait: float,
        requests: int = 1,
        priority: int = DEFAULT_PRIORITY,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> Admission:
        """Take ``requests`` and ``tokens`` from the scope's buckets (``input_tokens`` and
        ``output_tokens``, the same tokens split, from its input and output buckets where it has them).

        If they will be available within ``max_wait`` seconds they are reserved now and the caller must
        sleep ``Admission.wait`` before calling the provider; otherwise nothing is taken. A scope in
        cooldown (after a 429) waits out the cooldown either way. ``limit`` is the configured limit (None:
        none); a limit learnt from the provider's headers applies as well. ``priority`` is 0-9, higher
        more urgent (``PRIORITIES``).
        """
        return await self.acquire_any(
            [(scope, limit)],
            tokens=tokens,
            max_wait=max_wait,
            requests=requests,
            priority=priority,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def acquire_any(
        self,
        candidates: Sequence[tuple[str, LimitConfig | None]],
        *,
        tokens: int,
        max_wait: float,
        requests: int = 1,
        priority: int = DEFAULT_PRIORITY,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> Admission:
        """:meth:`acquire` from whichever of the candidate scopes (deployments of one model) can take
        the request soonest, in one script call; ``Admission.choice`` says which.

        The candidates are compared by their wait (cooldown, higher-priority jobs due back, buckets,
        learnt limits included); on a tie the one with more room left in its buckets is taken, so idle
        deployments share the load. Nothing is taken from the others.
        """
        if not candidates:
            raise ValueError("acquire_any needs at least one candidate scope")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be an integer from 0 to {MAX_PRIORITY}, not {priority!r}")
        for scope, _ in candidates:
            await self._remember(scope)
        shapes = [BucketShape.of(limit or UNLIMITED) for _, limit in candidates]
        raw = await self._script(
            keys=[keys.limiter(scope) for scope, _ in candidates],
            args=[
                "acquire",
                *shapes[0].args(),
                requests,
                tokens,
                max_wait,
                priority,
                LOW_PRIORITY_HOLD,
                input_tokens,
                output_tokens,
                *(arg for shape in shapes[1:] for arg in shape.args()),
            ],
        )
        reply = [value.decode() if isinstance(value, bytes) else str(value) for value in raw]
        admitted, wait, state = int(reply[0]), float(reply[1]), reply[2]
        numbers = [float(value) for value in reply[3:20]]
        ticket = None
        if admitted and state == "limited":
            ticket = Ticket(
                requests_charged=numbers[0],
                tokens_charged=numbers[1],
                request_belief=numbers[2],
                token_belief=numbers[3],
                request_corrections=numbers[4],
                token_corrections=numbers[5],
                requests_granted=numbers[6],
                tokens_granted=numbers[7],
                requests_estimated=numbers[8],
                tokens_estimated=numbers[9],
                tokens_asked=tokens,
                granted_at=numbers[10],
                input_charged=numbers[11],
                output_charged=numbers[12],
                input_belief=numbers[13],
                output_belief=numbers[14],
                input_corrections=numbers[15],
                output_corrections=numbers[16],
            )
        return Admission(
            admitted=bool(admitted), wait=wait, state=_state(state), ticket=ticket, choice=int(reply[20]) - 1
        )

    async def adjust(
        self,
        scope: str,
        limit: LimitConfig | None,
        *,
        tokens: float,
        ticket: Ticket | None = None,
        input_tokens: float = 0,
        output_tokens: float = 0,
    ) -> None:
        """Return ``tokens`` (as estimated) to the token bucket (a negative number charges more), and
        ``input_tokens``/``output_tokens`` to the input and output buckets.

        With the call's ``ticket`` the amount is scaled by the charge factor the call was admitted at.
        """
        if tokens == 0 and input_tokens == 0 and output_tokens == 0:
            return
        charged = tokens
        if ticket is not None and ticket.tokens_asked > 0:
            charged = tokens * ticket.tokens_charged / ticket.tokens_asked
        shape = BucketShape.of(limit or UNLIMITED)
        await self._run(scope, "adjust", shape, charged, tokens, 0, 0, input_tokens, output_tokens)

    async def refund(
        self, scope: str, limit: LimitConfig | None, ticket: Ticket | None, *, requests: bool = False
    ) -> None:
        """Give back the tokens a call took, and with ``requests`` its request too: the provider did not
        count it (a 429, or a call never sent)."""
        if ticket is None:
            return
        split = [ticket.input_charged, ticket.output_charged]
        if not (ticket.tokens_charged or any(split) or (requests and ticket.requests_charged)):
            return
        args: list[Any] = [ticket.tokens_charged, ticket.tokens_asked]
        args += [ticket.requests_charged, 1] if requests else [0, 0]
        await self._run(scope, "adjust", BucketShape.of(limit or UNLIMITED), *args, *split)

    async def observe(
        self,
        scope: str,
        limit: LimitConfig | None,
        said: ProviderLimits | None,
        ticket: Ticket | None,
        *,
        refused: bool = False,
    ) -> Learnt:
        """Learn from one provider answer: its stated limits and what it says is left.

        ``said`` None (a successful answer without rate-limit headers) marks a scope that has no learnt
        limit as unlimited. ``refused``: the answer was a 429, so the call took nothing at the provider.
        Where the provider states input and output token limits apart (Anthropic), those are learnt and
        its combined ``tokens`` figure, the tighter of the two, is not a limit of its own.
        """
        stated = {"requests": (0.0, -1.0), "tokens": (0.0, -1.0), "input": (0.0, -1.0), "output": (0.0, -1.0)}
        if said is not None:
            split = said.input_tokens is not None or said.output_tokens is not None
            readings = {
                "requests": said.requests,
                "tokens": None if split else said.tokens,
                "input": said.input_tokens,
                "output": said.output_tokens,
            }
            for name, reading in readings.items():
                if reading is not None:
                    left = -1.0 if reading.remaining is None else reading.remaining
                    stated[name] = (reading.limit or 0.0, left)
        if ticket is not None:
            ticket_args = ticket.args()
            charged = [ticket.requests_charged, ticket.tokens_charged]
            split_ticket = [
                *ticket.split_args(),
                ticket.input_charged,
                ticket.output_charged,
                ticket.granted_at,
            ]
        else:
            ticket_args, charged = [_NO_TICKET, _NO_TICKET, 0, 0, 0, 0, 0, 0], [0, 0]
            split_ticket = [_NO_TICKET, _NO_TICKET, 0, 0, 0, 0, 0]
        reply = await self._run(
            scope,
            "observe",
            BucketShape.of(limit or UNLIMITED),
            stated["requests"][0],
            stated["tokens"][0],
            stated["requests"][1],
            stated["tokens"][1],
            *ticket_args,
            int(refused),
            *charged,
            stated["input"][0],
            stated["output"][0],
            stated["input"][1],
            stated["output"][1],
            *split_ticket,
        )
        return Learnt(*(float(value) for value in reply[:4]))

    async def recheck(self, scope: str, ticket: Ticket | None) -> float:
        """Before sending a call admitted with a wait: seconds it must still pause, or 0 to go.

        A scope in cooldown answers what is left of it. A call admitted before the provider answered 429
        to another call answers at least a moment: its reservation was made on a count the provider has
        since shown to be too high, and it should take a new one.
        """
        reply = await self._run(scope, "cooldown", BucketShape.of(UNLIMITED), 0, 0)
        pause, refused_at = float(reply[1]), float(reply[2])
        if ticket is not None and refused_at > ticket.granted_at:
            return max(pause, REACQUIRE_DELAY)
        return pause

    async def cooldown(
        self, scope: str, seconds: float, *, longest: float = 0.0, rate_limited: bool = True
    ) -> float:
        """Pause the whole scope for ``seconds`` (a 429 seen by one worker); returns the pause left.

        With ``longest`` set, a 429 that arrives soon after the previous pause ended doubles the pause,
        up to ``longest`` seconds, so a provider that keeps refusing is probed less and less often.
        ``seconds=0`` only reads how much of the current pause is left. ``rate_limited=False``: a pause
        for another reason (a failing deployment), not counted among the scope's 429s.
        """
        reply = await self._run(
            scope, "cooldown", BucketShape.of(UNLIMITED), seconds, longest, 1 if rate_limited else 0
        )
        return float(reply[1])

    async def inspect(self, scope: str) -> ScopeState:
        """The scope's limits, levels, cooldown and last-minute counts, as the workers left them."""
        reply = await self._run(scope, "inspect", BucketShape.of(UNLIMITED))
        state, rpm, tpm, crpm, ctpm, lrpm, ltpm, rlevel, rcap, tlevel, tcap, cool, rshare, tfac, n, e = reply[
            :16
        ]
        split = [float(value) for value in reply[16:26]]
        return ScopeState(
            scope=scope,
            state=_state(state),
            rpm=float(rpm),
            tpm=float(tpm),
            configured_rpm=float(crpm),
            configured_tpm=float(ctpm),
            learnt_rpm=float(lrpm),
            learnt_tpm=float(ltpm),
            request_level=float(rlevel),
            request_capacity=float(rcap),
            token_level=float(tlevel),
            token_capacity=float(tcap),
            cooldown=float(cool),
            others_request_share=float(rshare),
            token_factor=float(tfac),
            requests_last_minute=int(float(n)),
            rate_limited_last_minute=int(float(e)),
            itpm=split[0],
            otpm=split[1],
            configured_itpm=split[2],
            configured_otpm=split[3],
            learnt_itpm=split[4],
            learnt_otpm=split[5],
            input_level=split[6],
            input_capacity=split[7],
            output_level=split[8],
            output_capacity=split[9],
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
        """Whether the scope's buckets are kept (a worker used it within the last hour)."""
        return bool(await self._redis.exists(keys.limiter(scope)))

    async def _remember(self, scope: str) -> None:
        if scope not in self._known_scopes:
            await self._redis.sadd(keys.limit_scopes(), scope)
            self._known_scopes.add(scope)

    async def _run(self, scope: str, op: str, shape: BucketShape, *args: Any) -> list[str]:
        reply = await self._script(keys=[keys.limiter(scope)], args=[op, *shape.args(), *args])
        return [value.decode() if isinstance(value, bytes) else str(value) for value in reply]


def _state(text: str) -> LimitState:
    if text in ("limited", "probing", "unlimited"):
        return text  # type: ignore[return-value]
    raise ValueError(f"unknown limiter state {text!r}")
