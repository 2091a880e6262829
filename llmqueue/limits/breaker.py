"""A circuit breaker per deployment, shared by every worker through Redis.

A deployment that fails with a connection error, 401 or 404 is taken out at once; one answering 5xx
or timing out is taken out after ``allowed_fails`` such failures within a minute. Taken out means two
things: its limiter scope is paused (:meth:`RateLimiter.cooldown`, so routing sends jobs to the other
deployments: the pause is part of the wait routing compares) and a ``down`` hash records why, expiring
when the pause ends. A deployment that fails again soon after it came back is paused twice as long, up
to ``max_cooldown_time`` (the limiter's escalation). A 429 is not a failure here: the limiter's own
cooldown handles it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.limits.limiter import RateLimiter
from llmqueue.model_list import RouterSettings

# Error kinds (llmqueue.llm.classify) that say the deployment, not the request, is at fault.
OPEN_AT_ONCE = frozenset({"connection", "auth", "not_found"})
COUNTED = frozenset({"server_error", "timeout"})
FAILURE_WINDOW = 60
# Seconds after it came back that a deployment still counts as lately taken out: jobs with a
# fallback keep away from it meanwhile (a deployment that failed this way is not trusted at once).
RECOVERY_WINDOW = 60


@dataclass(frozen=True)
class DownState:
    """Why a deployment is out and for how many more seconds."""

    reason: str
    remaining: float


@dataclass(frozen=True)
class DeploymentState:
    """A deployment as the workers left it: taken out or not, its pause, its limit and recent calls."""

    name: str
    down: DownState | None
    pause: float
    rpm: float
    requests_last_minute: int

    def describe(self) -> str:
        """``in service, 588 rpm, 120 calls in the last minute`` or ``taken out for 4s (connection)``."""
        if self.down is not None:
            return f"taken out for {self.down.remaining:.0f}s ({self.down.reason})"
        state = f"cooling down {self.pause:.1f}s (429)" if self.pause > 0 else "in service"
        limit = f", {self.rpm:g} rpm" if self.rpm else ""
        return f"{state}{limit}, {self.requests_last_minute} calls in the last minute"


@dataclass(frozen=True)
class ServiceState:
    """Whether a model's deployments can take a call: what the failure policy needs to move a job on.

    ``out_for``: seconds until the first of them takes calls again (0: one takes calls now; a 429's
    pause counts). ``taken_out``: the breaker has every one of them out. ``lately_out``: every one of
    them is out or came back less than ``RECOVERY_WINDOW`` seconds ago.
    """

    out_for: float = 0.0
    taken_out: bool = False
    lately_out: bool = False


async def deployment_states(redis: Redis, names: Sequence[str]) -> list[DeploymentState]:
    """The current state of each named deployment (for ``llmqueue status``)."""
    limiter = RateLimiter(redis)
    downs = await CircuitBreaker(redis, limiter, RouterSettings()).down(names)
    states = []
    for name, down in zip(names, downs, strict=True):
        scope = await limiter.inspect(name)
        states.append(DeploymentState(name, down, scope.cooldown, scope.rpm, scope.requests_last_minute))
    return states


class CircuitBreaker:
    """Takes failing deployments out of routing for a while; state in Redis, shared by workers."""

    def __init__(
        self,
        redis: Redis,
        limiter: RateLimiter,
        settings: RouterSettings,
    ) -> None:
        self._redis = redis
        self._limiter = limiter
        self._settings = settings

    async def service(self, scopes: Sequence[str]) -> ServiceState:
        """The service state of the deployments ``scopes`` of one model (one scope: a plain model)."""
        if not scopes:
            return ServiceState()
        downs = await self.down(scopes)
        pauses = [await self._limiter.cooldown(scope, 0) for scope in scopes]
        out_for = min(max(p, d.remaining if d else 0.0) for p, d in zip(pauses, downs, strict=True))
        last = await self._redis.mget([keys.breaker_last_out(scope) for scope in scopes])
        return ServiceState(out_for, all(d is not None for d in downs), all(t is not None for t in last))

    @staticmethod
    def is_deployment_fault(kind: str) -> bool:
        """Whether an error of this kind is about the deployment (rather than the request or a 429)."""
        return kind in OPEN_AT_ONCE or kind in COUNTED

    async def record_failure(self, scope: str, kind: str) -> bool:
        """Count a failed call of the deployment ``scope``; True when it is (now) taken out."""
        if kind in COUNTED:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(keys.breaker_failures(scope))
                pipe.expire(keys.breaker_failures(scope), FAILURE_WINDOW, nx=True)
                count, _ = await pipe.execute()
            if int(count) < self._settings.allowed_fails:
                return bool(await self._redis.exists(keys.breaker_down(scope)))
        elif kind not in OPEN_AT_ONCE:
            return False
        await self._open(scope, kind)
        return True

    async def taken_out_with_others_left(self, scope: str, kind: str, others: Sequence[str]) -> bool:
        """Record a failed call of ``scope``; True when it is now out of service and at least one of
        ``others`` (the same model's other deployments) is in service to take its jobs."""
        if not self.is_deployment_fault(kind) or not await self.record_failure(scope, kind):
            return False
        return any(state is None for state in await self.down(others)) if others else False

    async def down(self, scopes: Sequence[str]) -> list[DownState | None]:
        """For each scope, why and how long it is out, or None when it is in service."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.hget(keys.breaker_down(scope), "reason")
                pipe.pttl(keys.breaker_down(scope))
            replies = await pipe.execute()
        states: list[DownState | None] = []
        for reason, ttl in zip(replies[::2], replies[1::2], strict=True):
            if reason is None or int(ttl) <= 0:
                states.append(None)
            else:
                states.append(DownState(reason.decode(), int(ttl) / 1000))
        return states

    async def _open(self, scope: str, kind: str) -> None:
        settings = self._settings
        remaining = await self._limiter.cooldown(
            scope,
            settings.cooldown_time,
            longest=max(settings.cooldown_time, settings.max_cooldown_time),
            rate_limited=False,
        )
        down = keys.breaker_down(scope)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(down, mapping={"reason": kind})
            pipe.pexpire(down, max(1, math.ceil(remaining * 1000)))
            pipe.delete(keys.breaker_failures(scope))
            pipe.set(keys.breaker_last_out(scope), kind, ex=math.ceil(remaining) + RECOVERY_WINDOW)
            await pipe.execute()
