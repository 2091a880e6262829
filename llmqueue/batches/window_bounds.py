"""A batch's window: how many of its jobs to keep unfinished in Redis (``window_size``), and how many
more may be queued now (``window_room``). ``llmqueue run`` (``llmqueue.batches.window``) and
``llmqueue submit`` (``llmqueue.batches.blocks``) both feed their batches by it."""

from __future__ import annotations

import math

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.queue.ledger import GATE_FIELDS, stop_reason

__all__ = ["ASSUMED_LATENCY", "FEED_CHUNK", "WINDOW_CEILING", "WINDOW_FLOOR", "window_room", "window_size"]

WINDOW_FLOOR = 200
"""The smallest window derived: below it, feeding round trips would cost more than they save."""
WINDOW_CEILING = 20_000
"""The largest window derived (about 50 MB of Redis for 1 KB prompts); the setting may go past it."""
ASSUMED_LATENCY = 10.0
"""Seconds a provider call is taken to last, to size the window from a rate (Little's law)."""
FEED_CHUNK = 1000
_COUNTS = ["succeeded", "failed", "cancelled", "written"]


def window_size(*, rpm: float | None, slots: int, override: int | None = None) -> int:
    """How many jobs of a batch to keep unfinished in Redis.

    ``override`` (``[batch] window``) wins. Otherwise twice what the workers can have in flight: the
    rate (``rpm``, requests per minute) times ``ASSUMED_LATENCY``, or with no rate the workers' job
    ``slots`` (processes times concurrent jobs each), the lower of the two when both bound it, within
    ``WINDOW_FLOOR`` and ``WINDOW_CEILING``. Twice, so the workers find jobs waiting between two feeds.
    """
    if override is not None:
        return override
    in_flight = float(slots)
    if rpm is not None:
        in_flight = min(in_flight, rpm / 60 * ASSUMED_LATENCY)
    return max(WINDOW_FLOOR, min(WINDOW_CEILING, math.ceil(2 * in_flight)))


async def window_room(redis: Redis, batch_id: str, window: int, *, written_bound: bool) -> int:
    """How many more of the batch's jobs may be queued now: ``window`` less its jobs fed and not
    finished; with ``written_bound`` (``llmqueue run``, which writes the results in order), also
    twice the window less its jobs not yet written. A cancelled or spent batch always has
    ``FEED_CHUNK`` of room: its workers end each job unsent as it starts, so the rest of its lines go
    through at no cost and its total is reached."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.batch_jobs(batch_id))
        pipe.hmget(keys.batch(batch_id), [*_COUNTS, *GATE_FIELDS])
        replies = await pipe.execute()
    listed, counts = int(replies[0]), replies[1]
    if stop_reason(counts[4:]) is not None:
        return FEED_CHUNK
    finished = sum(int(float(count)) for count in counts[:3] if count is not None)
    room = window - (listed - finished)
    if written_bound:
        room = min(room, 2 * window - (listed - int(counts[3] or 0)))
    return room
