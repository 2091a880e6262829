"""llmqueue's worker loop: claim ready jobs many at a time, run each through the runner, release it.

arq stays the queue (its connection, keys, job format and sorted set; see ``llmqueue.queue.ready``),
but arq's ``Worker`` offers no public way to choose which jobs to take or to claim several in one
call, and priorities and batch fairness are exactly that. So the loop is llmqueue's own, built on
arq's public pieces only: the pool from ``arq.connections.create_pool``, arq's key prefixes (through
``llmqueue.keys``), its job payload (``llmqueue.queue.payload``), its health-check key, and its
``Retry`` exception as the runner's way of saying "again later".

One pass of the loop:

1. Claim up to the free slots in one script call (``ReadyQueue.claim``: highest priority first,
   batches in turn), ``batch`` jobs only up to :class:`~llmqueue.queue.slots.Slots`' share.
2. Run each claimed job as a task: ``runner.handle(job_id, job)`` under the job timeout, then
   release it in one script call:

   - it returned: finished (its result is stored; usually the result's script ended the claim too);
   - it raised ``Retry(defer=s)``: deferred ``s`` seconds from now (``s`` = 0: back in its lane as due);
   - it was cancelled (the worker stops): back as due, to run again, no attempt spent;
   - it outran the job timeout or raised (a bug): logged, and finished, as arq's worker does.

3. Every ``health_check_interval``: arq's health-check key (``arq --check`` reads it), with
   llmqueue's counts (``llmqueue.ops.counters``).
4. Wait for a producer's wake-up (BLPOP on ``keys.wake``) up to ``poll_delay``, so a job just queued
   starts within milliseconds; a Redis error is waited out (``llmqueue.queue.outage``).

:meth:`WorkerLoop.stop` takes no new job, lets the running ones end for a grace period, then cancels
the rest (they go back to the queue). In burst mode the loop ends by itself once arq's queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from arq.constants import health_check_key_suffix
from arq.worker import Retry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.ops.counters import JobCounts
from llmqueue.queue import payload
from llmqueue.queue.outage import RedisOutage
from llmqueue.queue.ready import LOW_PRIORITY_BELOW, Claimed, ReadyQueue, ReleaseMode
from llmqueue.queue.runner import JobRunner
from llmqueue.queue.scripts import now_ms
from llmqueue.queue.slots import Slots
from llmqueue.redaction import redis_error_line
from llmqueue.settings import WorkerConfig

__all__ = ["WorkerLoop"]

logger = logging.getLogger("llmqueue.worker")


class WorkerLoop:
    """Takes ``config.queue_name``'s jobs for ``runner`` until stopped (``burst``: until none is left).

    ``job_timeout`` (seconds) bounds one run of a job; ``counts`` are shown in the health-check line;
    ``where`` names the Redis server in log lines. A burst loop does not end while ``more_to_come()``
    (a submitted batch has lines left to queue).
    """

    def __init__(
        self,
        redis: Redis,
        config: WorkerConfig,
        runner: JobRunner,
        *,
        job_timeout: float,
        burst: bool = False,
        more_to_come: Callable[[], Awaitable[bool]] | None = None,
        counts: JobCounts | None = None,
        where: str = "",
    ) -> None:
        self.redis = redis
        self.config = config
        self.runner = runner
        self.job_timeout = job_timeout
        self.burst = burst
        self.more_to_come = more_to_come
        self.counts = counts or JobCounts()
        self.where = where
        self.ready = ReadyQueue(
            redis, config.queue_name, claim_ttl=config.in_progress_ttl, state_ttl=config.job_ttl
        )
        self.slots = Slots(config.max_jobs, config.slots_reserved())
        self.tasks: dict[str, asyncio.Task[None]] = {}
        """The running jobs' tasks, by job id."""
        self._stopping = asyncio.Event()
        self._grace = config.shutdown_grace
        self._last_health = -math.inf
        self._limits_published = False

    @property
    def health_key(self) -> str:
        """arq's health-check key of the queue."""
        return self.config.queue_name + health_check_key_suffix

    def stop(self, grace: float | None = None) -> None:
        """Take no new job; running jobs may end for ``grace`` seconds (default ``shutdown_grace``;
        ``math.inf``: as long as they take), then they are cancelled and go back to the queue.
        Called again while stopping: cancel the running jobs now."""
        if self._stopping.is_set():
            for task in self.tasks.values():
                task.cancel()
            return
        self._grace = self.config.shutdown_grace if grace is None else grace
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run jobs until :meth:`stop` (or, in burst mode, until the queue is empty), then
        wait for the running jobs as :meth:`stop` says. Raises ``RedisRefusedError`` when Redis refuses
        this worker's credentials (after the running jobs end)."""
        self.runner.release_on_finish = True  # a stored result also ends the claim: one round trip less
        self.runner.limiter.on_wake = self.ready.wake  # parked jobs come back when capacity does
        outage = RedisOutage(self.where)
        wake = keys.wake(self.config.queue_name)
        try:
            while not self._stopping.is_set():
                try:
                    # A stop does not wait for a poll that Redis holds up (an outage: its command
                    # retries take ~17 s); jobs a cut-off claim took go back when the claim expires.
                    if not await self._unless_stopped(self._poll()):
                        break
                    outage.ended()
                    if self.burst and await self._queue_done():
                        self._grace = math.inf
                        break
                    if self.slots.free > 0:
                        await self._unless_stopped(self.redis.blpop([wake], timeout=self.config.poll_delay))
                    else:
                        await self._pause(self.config.poll_delay)
                except (RedisError, OSError) as exc:
                    await self._pause(outage.wait_after(exc))
        finally:
            await self._drain()

    async def _queue_done(self) -> bool:
        # In this order: a batch's last block leaves ``more_to_come`` only once its jobs are queued.
        if self.more_to_come is not None and await self.more_to_come():
            return False
        return int(await self.redis.zcard(self.config.queue_name)) == 0

    async def _poll(self) -> None:
        if not self._limits_published:  # a raised spending limit wakes the jobs it held
            await self.runner.spending.publish(self.ready.wake)
            self._limits_published = True
        if self.slots.free > 0:
            for job in await self.ready.claim(self.slots.free, low_priority_limit=self.slots.low_free):
                self._start(job)
        await self._record_health()

    def _start(self, job: Claimed) -> None:
        low = job.priority < LOW_PRIORITY_BELOW
        self.slots.take(low=low)
        self.runner.starts[job.job_id] = job.start  # what the claim read: no round trip to begin
        task = asyncio.create_task(self._run(job, low=low))
        self.tasks[job.job_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job.job_id, None))

    async def _run(self, job: Claimed, *, low: bool) -> None:
        mode: ReleaseMode = "finish"
        defer_ms = 0
        try:
            mode, defer_ms = await self._outcome(job)
        finally:
            self.runner.starts.pop(job.job_id, None)
            self.slots.give_back(low=low, deferred=mode == "defer")
            await asyncio.shield(self._release(job, mode, defer_ms))

    async def _outcome(self, job: Claimed) -> tuple[ReleaseMode, int]:
        """Run the job once; how to release it, and for a deferral, by how many ms to move its score."""
        job_id = job.job_id
        if job.payload is None:
            logger.warning("job %s expired before it ran", job_id)
            return "finish", 0
        if logger.isEnabledFor(logging.INFO):
            logger.info("job %s picked (priority %d, start %d)", job_id, job.priority, job.job_try)
        try:
            await asyncio.wait_for(
                self.runner.handle(job_id, payload.job_argument(job.payload)), self.job_timeout
            )
        except Retry as retry:
            if not retry.defer_score:
                logger.info("job %s back in the queue now", job_id)
                return "back", 0
            logger.info("job %s back in the queue in %.2fs", job_id, retry.defer_score / 1000)
            # arq's score is when the job was due; it becomes now + the delay.
            return "defer", max(0, retry.defer_score + now_ms() - job.score)
        except asyncio.CancelledError:
            logger.info("job %s back in the queue (the worker is stopping)", job_id)
            return "back", 0
        except TimeoutError:
            logger.error("job %s failed: it ran longer than the job timeout (%gs)", job_id, self.job_timeout)
        except Exception:
            logger.exception("job %s failed in the worker", job_id)
        else:
            logger.info("job %s done", job_id)
        return "finish", 0

    async def _release(self, job: Claimed, mode: ReleaseMode, defer_ms: int) -> None:
        if job.job_id in self.runner.released:
            self.runner.released.discard(job.job_id)  # the result's script ended the claim already
            if mode == "finish":
                return
        try:
            await self.ready.release(job.job_id, mode, defer_ms=defer_ms)
        except (RedisError, OSError) as exc:
            # Its claim expires without the heartbeat, and the claim script's sweep puts it back then.
            logger.warning("job %s: could not release its claim (%s)", job.job_id, redis_error_line(exc))

    async def _record_health(self) -> None:
        interval = self.config.health_check_interval
        if time.monotonic() - self._last_health < interval:
            return
        self._last_health = time.monotonic()
        queued = await self.redis.zcard(self.config.queue_name)
        counts = f"{self.counts.as_text()} running={len(self.tasks)} queued={queued}"
        line = f"{datetime.now():%b-%d %H:%M:%S} {counts}"
        await self.redis.psetex(self.health_key, int((interval + 1) * 1000), line)

    async def _unless_stopped(self, work: Awaitable[object]) -> bool:
        """Await ``work`` unless :meth:`stop` comes first (then cancel it): True when it completed."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the loop is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drain(self) -> None:
        if not self.tasks:
            return
        grace = self._grace
        logger.info(
            "stopping: %d job(s) running may end %s",
            len(self.tasks),
            "as they will" if grace == math.inf else f"within {grace:g}s",
        )
        _, late = await asyncio.wait(set(self.tasks.values()), timeout=None if grace == math.inf else grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
