"""Following a batch: its status as it runs, and what holds it up when it stops progressing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.errors import BatchStalledError
from llmqueue.ops.registry import STARTING_PATIENCE, no_worker_reason
from llmqueue.queue.ledger import BatchLedger, BatchStatus
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings

_CHUNK = 1000
STALL_CHECK_SECONDS = 5.0
"""A batch that finished no job for this long is checked for what holds it up (and again as often)."""


class BatchFollowing:
    """The following side of :class:`llmqueue.batches.control.Batches`."""

    store: JobStore
    settings: Settings | None
    redis: Redis
    ledger: BatchLedger

    async def follow(
        self,
        batch_id: str,
        interval: float = 0.5,
        on_stall: Callable[[str], None] | None = None,
        starting_patience: float = STARTING_PATIENCE,
    ) -> AsyncIterator[BatchStatus]:
        """Yield the batch's status now and every ``interval`` seconds, the last one when it is done.

        When no job finished for ``STALL_CHECK_SECONDS``, it looks for why: no live worker on the queue
        (a worker starting counts as one for ``starting_patience`` seconds) is told to ``on_stall``
        (once, and again if it comes back after workers were seen); jobs that are neither queued,
        running nor finished raise BatchStalledError, as the batch can never be done.
        """
        progress_at, finished, warned = time.monotonic(), -1, None
        while True:
            status = await self.ledger.status(batch_id)
            yield status
            if status.done:
                return
            now = time.monotonic()
            if status.finished != finished:
                progress_at, finished = now, status.finished
            elif now - progress_at >= STALL_CHECK_SECONDS:
                progress_at = now  # checked again after as long, not at every poll
                reason = await self.stall_reason(batch_id, starting_patience)
                if reason != warned and reason is not None and on_stall is not None:
                    on_stall(reason)
                warned = reason
            await asyncio.sleep(interval)

    async def stall_reason(self, batch_id: str, starting_patience: float = STARTING_PATIENCE) -> str | None:
        """Why the batch is not progressing now, if something other than waiting explains it.

        Raises BatchStalledError when some of its jobs are neither queued, running nor finished (lost:
        a submission cut short, a job deleted); returns the reason when it is paused or no worker is
        running.
        """
        lost = await self.lost_jobs(batch_id)
        if lost:
            await asyncio.sleep(1.0)  # a job between two keys (retry_failed re-queueing it) is not lost
            lost = await self._without_trace(lost)
        if lost:
            # The commands keep the batch's tier: a Batch API batch's lines never go to live workers
            # (at live prices) without the user saying so.
            via = await self.redis.hget(keys.batch(batch_id), "via")
            tier = " --via batch-api" if via == b"batch-api" else ""
            raise BatchStalledError(
                f"batch {batch_id}: {len(lost)} job(s) are neither queued, running nor finished (e.g. "
                f"{lost[0]}), so it can never be done; submit its file again to the same batch "
                f"(`llmqueue submit FILE --batch {batch_id}{tier}` or "
                f"`llmqueue run --resume {batch_id}{tier}`) "
                "to queue them"
            )
        if await self.redis.hexists(keys.batch(batch_id), "paused"):
            return f"batch {batch_id} is paused: `llmqueue resume {batch_id}` lets it go on"
        interval = self.settings.worker.heartbeat_interval if self.settings else 5.0
        return await no_worker_reason(
            self.redis, self.store.queue_name, heartbeat_interval=interval, patience=starting_patience
        )

    async def lost_jobs(self, batch_id: str) -> list[str]:
        """Ids of the batch's jobs with no result and no queued job behind them (past those a run wrote
        to its output and dropped)."""
        lost: list[str] = []
        start = int(await self.redis.hget(keys.batch(batch_id), "written") or 0)
        while True:
            members = await self.redis.zrange(keys.batch_jobs(batch_id), start, start + _CHUNK - 1)
            if not members:
                return lost
            lost += await self._without_trace([member.decode() for member in members])
            start += len(members)

    async def _without_trace(self, job_ids: list[str]) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.result(job_id), keys.arq_job(job_id))
            found = await pipe.execute()
        return [job_id for job_id, count in zip(job_ids, found, strict=True) if not count]

    async def wait(
        self,
        batch_id: str,
        on_progress: Callable[[BatchStatus], None] | None = None,
        interval: float = 0.5,
        on_stall: Callable[[str], None] | None = None,
    ) -> BatchStatus:
        """Return once every job of the batch has a result, calling ``on_progress`` each ``interval``
        (and ``on_stall`` as ``follow`` does)."""
        async for status in self.follow(batch_id, interval, on_stall):
            if on_progress is not None:
                on_progress(status)
        return status
