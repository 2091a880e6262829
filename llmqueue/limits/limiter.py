"""A token-bucket rate limiter shared by every worker through Redis.

Each limit scope has two buckets, requests and tokens, refilled continuously at ``rpm/60`` and
``tpm/60`` per second up to a capacity of ``burst_seconds`` of the rate. One Lua script
(``limiter.lua``, run by SHA) checks and takes both atomically with Redis ``TIME`` as the clock,
so workers on many machines never oversubscribe a scope together.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.settings import LimitConfig

_SCRIPT = resources.files("llmqueue.limits").joinpath("limiter.lua").read_text(encoding="utf-8")
UNLIMITED = LimitConfig()


@dataclass(frozen=True)
class Admission:
    """The limiter's answer: ``admitted`` after sleeping ``wait`` seconds, or not admitted at all.

    When not admitted nothing was taken, and ``wait`` is how long until the request could be.
    """

    admitted: bool
    wait: float


@dataclass(frozen=True)
class BucketShape:
    rpm: float
    tpm: float
    request_capacity: float
    token_capacity: float

    @classmethod
    def of(cls, limit: LimitConfig) -> BucketShape:
        rpm, tpm = limit.rpm or 0.0, limit.tpm or 0.0
        return cls(
            rpm=rpm,
            tpm=tpm,
            # At least one request must fit, or a low rpm with a short burst could never admit anything.
            request_capacity=max(1.0, rpm * limit.burst_seconds / 60),
            token_capacity=max(1.0, tpm * limit.burst_seconds / 60),
        )

    def args(self) -> list[Any]:
        return [self.rpm, self.tpm, self.request_capacity, self.token_capacity]


class RateLimiter:
    """Shared request and token buckets, one pair per scope, kept in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)

    async def acquire(
        self, scope: str, limit: LimitConfig | None, *, tokens: int, max_wait: float, requests: int = 1
    ) -> Admission:
        """Take ``requests`` and ``tokens`` from the scope's buckets.

        If they will be available within ``max_wait`` seconds they are reserved now and the caller must
        sleep ``Admission.wait`` before calling the provider; otherwise nothing is taken. A scope in
        cooldown (after a 429) waits out the cooldown either way. No limit means only the cooldown applies.
        """
        shape = BucketShape.of(limit or UNLIMITED)
        admitted, wait = await self._run(scope, "acquire", shape, requests, tokens, max_wait)
        return Admission(admitted=bool(admitted), wait=float(wait))

    async def adjust(self, scope: str, limit: LimitConfig | None, *, tokens: int) -> None:
        """Return ``tokens`` to the token bucket (a negative number charges more) after a call."""
        if limit is None or limit.tpm is None or tokens == 0:
            return
        await self._run(scope, "adjust", BucketShape.of(limit), tokens)

    async def cooldown(self, scope: str, seconds: float, *, longest: float = 0.0) -> float:
        """Pause the whole scope for ``seconds`` (a 429 seen by one worker); returns the pause left.

        With ``longest`` set, a 429 that arrives soon after the previous pause ended doubles the pause,
        up to ``longest`` seconds, so a provider that keeps refusing is probed less and less often.
        ``seconds=0`` only reads how much of the current pause is left.
        """
        _, remaining = await self._run(scope, "cooldown", BucketShape.of(UNLIMITED), seconds, longest)
        return float(remaining)

    async def _run(self, scope: str, op: str, shape: BucketShape, *args: Any) -> tuple[int, str]:
        admitted, value = await self._script(keys=[keys.limiter(scope)], args=[op, *shape.args(), *args])
        return int(admitted), value.decode() if isinstance(value, bytes) else str(value)
