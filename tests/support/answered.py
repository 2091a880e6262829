"""A limiter for tests of the schedule alone."""

from collections.abc import Sequence
from typing import Any

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
                await self.redis.hsetnx(keys.limiter(scope), "hdr", "none")
        return await super().acquire(candidates, **options)
