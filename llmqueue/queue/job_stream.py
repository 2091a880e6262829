"""A streamed job's answer as it comes: a Redis Stream per job, written by the worker, read by its handle.

Entries have a field ``t``, their type: ``delta`` (``d`` holds text, several provider chunks coalesced:
one write per ``FLUSH_SECONDS`` or ``FLUSH_CHARS``), ``restart`` (a new attempt starts streaming after
an earlier one was cut off: what came before it is void), and ``end`` (the provider finished; the
result follows). The stream is capped near ``MAX_ENTRIES`` entries and expires with the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.redaction import redis_error_line

logger = logging.getLogger("llmqueue.worker")

FLUSH_SECONDS = 0.05
"""Longest a delta waits in the worker before it is written."""
FLUSH_CHARS = 256
"""Characters that are written at once, however soon."""
MAX_ENTRIES = 10_000
"""The stream's approximate length cap (``XADD MAXLEN ~``)."""
READ_BLOCK_MS = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class StreamEvent:
    """One event of a job's stream: ``delta`` (``text``), or ``restart`` (drop the text so far: the job
    was retried and streams again). ``id`` is where to resume: ``handle.stream(after=event.id)``."""

    kind: Literal["delta", "restart"]
    text: str
    id: str


class StreamWriter:
    """Appends one job's deltas to its stream, coalesced; ``ttl`` seconds is how long the stream lives."""

    def __init__(self, redis: Redis, job_id: str, ttl: float) -> None:
        self.redis = redis
        self.key = keys.job_stream(job_id)
        self.ttl = ttl
        self._buffer: list[str] = []
        self._size = 0
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.refused = False
        """Set once Redis refused a write: nothing more is written to the stream."""

    async def write(self, answer: Callable[[Callable[[str], Awaitable[None]]], Awaitable[T]]) -> T:
        """Stream one attempt: ``answer`` (the provider's streamed call) is handed :meth:`add` for its
        deltas; its whole answer is returned. A call that raises leaves the stream abandoned."""
        await self.begin()
        try:
            response = await answer(self.add)
        except BaseException:
            await asyncio.shield(self.abandon())
            raise
        await self.end()
        return response

    async def begin(self) -> None:
        """Start an attempt's stream: a ``restart`` event if an earlier attempt wrote to it."""
        try:
            earlier = await self.redis.exists(self.key)
        except RedisError:
            earlier = True  # unknown: a restart event too many is harmless, one too few is not
        if earlier:
            await self._add({"t": "restart"})

    async def add(self, text: str) -> None:
        """Take a delta; it is written at once when ``FLUSH_CHARS`` are waiting or no write was pending,
        else within ``FLUSH_SECONDS``."""
        if not text:
            return
        self._buffer.append(text)
        self._size += len(text)
        if self._size >= FLUSH_CHARS:
            await self.flush()
        elif self._timer is None:
            # The first delta after a write goes out now; the ones after it, with the timer's.
            await self.flush()
            self._timer = asyncio.ensure_future(self._flush_later())

    async def end(self) -> None:
        """Write what is waiting, then the ``end`` event."""
        await self._stop_timer()
        await self.flush()
        await self._add({"t": "end"})

    async def abandon(self) -> None:
        """Stop the timer of an attempt that failed (its deltas stay; the next attempt restarts)."""
        await self._stop_timer()
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            text, self._buffer, self._size = "".join(self._buffer), [], 0
            await self._add({"t": "delta", "d": text})

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        self._timer = None
        await self.flush()

    async def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None

    async def _add(self, fields: dict[str, str]) -> None:
        # The answer is being paid for: a Redis error ends the stream (logged), never the call.
        if self.refused:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.key, fields, maxlen=MAX_ENTRIES, approximate=True)
                pipe.expire(self.key, max(1, int(self.ttl)))
                await pipe.execute()
        except RedisError as exc:
            self.refused = True
            logger.warning(
                "stream %s: Redis refused a write (%s); the rest goes to the result only",
                self.key,
                redis_error_line(exc),
            )


async def read_stream(
    redis: Redis, job_id: str, *, after: str, finished: Callable[[], Awaitable[bool]]
) -> AsyncIterator[StreamEvent]:
    """The events of a job's stream after the id ``after`` (``"0"``: from the start), waiting for new
    ones, until its ``end`` event, or until ``finished()`` says the job has its result and nothing more
    is to come (a job that ended before streaming)."""
    key = keys.job_stream(job_id)
    last = after
    while True:
        answer = await redis.xread({key: last}, block=READ_BLOCK_MS, count=100)
        if not answer:
            if await finished():
                answer = await redis.xread({key: last}, count=10_000)  # what came just before it
                if not answer:
                    return
            else:
                continue
        for entry_id, fields in answer[0][1]:
            last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            kind = fields.get(b"t", b"").decode()
            if kind == "end":
                return
            if kind == "restart":
                yield StreamEvent("restart", "", last)
            elif kind == "delta":
                yield StreamEvent("delta", fields.get(b"d", b"").decode(), last)
