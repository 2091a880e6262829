"""A worker's share of feeding submitted batches: every ``interval`` seconds it looks at the queue's
batches with blocks of lines left (``keys.windowed_batches``) and queues the next blocks of those whose
window has room (``llmqueue.batches.blocks``). Every worker does, so no single feeder can die with a
batch; the batch's lease keeps two of them from queueing the same block at once."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.batches.blocks import expand_window
from llmqueue.batches.control import Batches
from llmqueue.batches.submit import SubmitReport
from llmqueue.ops.tasks import cancel_and_wait
from llmqueue.redaction import redis_error_line

__all__ = ["FEED_INTERVAL", "BlockFeeder"]

logger = logging.getLogger("llmqueue.worker")

FEED_INTERVAL = 0.5
"""Seconds between two looks at the windowed batches: a window of 200 or more lasts longer."""


class BlockFeeder:
    """Queues the next blocks of the queue's windowed batches, as ``owner`` (a worker id), every
    ``interval`` seconds (``FEED_INTERVAL``); lines the workers' settings (``batches.settings``) refuse
    end as failed results."""

    def __init__(self, batches: Batches, *, owner: str, interval: float = FEED_INTERVAL) -> None:
        self.batches = batches
        self.owner = owner
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._feed_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def feed(self) -> int:
        """One look: queue the blocks the windows have room for; returns how many jobs were queued."""
        windowed = await self.batches.redis.smembers(keys.windowed_batches(self.batches.store.queue_name))
        queued = 0
        for raw in sorted(windowed):
            batch_id = raw.decode()
            report = SubmitReport(batch_id=batch_id, submitted=0, already_known=0, rejected=[])
            await expand_window(
                self.batches, batch_id, report, refuse=self.batches.refuser(), owner=self.owner
            )
            queued += report.submitted
            for error in report.rejected:
                logger.warning(
                    "batch %s: line %d refused as it was queued: %s", batch_id, error.line, error.reason
                )
        return queued

    async def pending(self) -> bool:
        """Whether a batch of the queue has lines left to queue (a burst worker does not end then)."""
        return bool(await self.batches.redis.scard(keys.windowed_batches(self.batches.store.queue_name)))

    async def _feed_forever(self) -> None:
        while True:
            try:
                await self.feed()
            except (RedisError, OSError) as exc:
                logger.warning(
                    "could not queue the next lines of a batch (%s); trying again", redis_error_line(exc)
                )
            except Exception:  # a batch that cannot be fed must not stop the worker's jobs
                logger.exception("could not queue the next lines of a batch")
            await asyncio.sleep(self.interval)
