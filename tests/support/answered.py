"""A limiter for tests of the schedule alone."""

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.limits.limiter import Admission, RateLimiter
from llmqueue.settings import LimitConfig


class AnsweredBefore(RateLimiter):
    """A limiter whose configured scopes have had an answer from their provider before (one without
    rate-limit headers), as in a system that has run: their first calls are not held back to probe
    the provider's limits, so these tests see the schedule alone. The probe has tests of its own."""

    async def acquire(
        self, candidates: Sequence[tuple[str, LimitConfig | None]], **options: Any
    ) -> Admission:
        for scope, limit in candidates:
            if limit is not None:
                await heard_before(self.redis, scope)
        return await super().acquire(candidates, **options)


async def heard_before(redis: Redis, scope: str) -> None:
    """Mark ``scope`` as answered by its provider before (without rate-limit headers), as a scope of a
    system that has run: its first calls are not held back two at a time to probe its limits."""
    await redis.hsetnx(keys.limiter(scope), "hdr", "none")
