"""What follows a paid answer off its path: the limiter's feedback, sent after the job's result is
stored, and bookkeeping that Redis may refuse without costing the result (:func:`best_effort`).

Feedback runs as tasks the job does not wait for: a stopping worker cannot cut a job off after its
result is stored (arq would put it back in the queue). :meth:`Settling.settle` waits for what is
left when the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from redis.exceptions import RedisError

from llmqueue.redaction import redis_error_line

logger = logging.getLogger("llmqueue.worker")


@contextlib.asynccontextmanager
async def best_effort(what: str) -> AsyncIterator[None]:
    """Log and skip a Redis error in bookkeeping that must not cost a paid result."""
    try:
        yield
    except RedisError as exc:
        logger.warning("%s skipped: %s", what, redis_error_line(exc))


class Settling:
    """The limit feedback one worker still has on its way to Redis."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, feedback: Coroutine[Any, Any, None]) -> None:
        """Send ``feedback`` in the background; a Redis error is logged, a bug logged with its trace."""
        task = asyncio.ensure_future(_logged(feedback))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the feedback still being sent, then give up what is
        left: the limiter corrects itself from later answers."""
        if not self.tasks:
            return
        _, late = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


async def _logged(feedback: Coroutine[Any, Any, None]) -> None:
    try:
        async with best_effort("limit feedback"):
            await feedback
    except Exception:  # a bug here must not pass silently, nor end the worker
        logger.exception("limit feedback failed")
