"""A producer's waits for results: any number of them on one reader, one connection blocked at a time.

Jobs a producer submits name its inbox (a Redis list) and a worker pushes a job's id there as it stores
the result; a job submitted elsewhere (``Producer.handle(id)``) is told of by its ``done`` list. One
listener task blocks (BLPOP) on the inbox and every such ``done`` list together, and settles the waits
it reads; all waits for one job share one future. So thousands of waits hold one blocked connection,
and the producer's client pool (a few connections) carries the rest.

Once every ``GONE_CHECK`` seconds one look, for every job awaited, checks that Redis still holds the
job or its result, and settles a wait whose result is there (its word went to another producer). A
job Redis no longer holds will never have a result: its waits end with :class:`JobNotFoundError`,
saying why when Redis can tell (it restarted without persistence, it evicted keys), while the other
waits go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue import keys
from llmqueue.errors import JobNotFoundError
from llmqueue.models import JobResult
from llmqueue.queue.store import JobStore

LISTEN_BLOCK_SECONDS = 1
"""Seconds one BLPOP blocks; waits for jobs of other producers join the next one."""
GONE_CHECK = 5.0
"""Seconds between checks that an awaited job is still in Redis (queued, running or finished)."""
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
LOOK_CHUNK = 1000
_RECONNECT_DELAY = 1.0  # seconds between attempts while Redis is unreachable
logger = logging.getLogger("llmqueue.producer")


class ResultWaits:
    """Every wait of one producer (see the module docstring)."""

    def __init__(self, store: JobStore, inbox: str, *, job_ttl: float, result_ttl: float) -> None:
        self.store = store
        self.redis = store.redis
        self.inbox = inbox
        self.job_ttl = job_ttl
        self.result_ttl = result_ttl
        self._futures: dict[str, asyncio.Future[JobResult]] = {}
        self._waiting: Counter[str] = Counter()
        self._by_done: set[str] = set()
        """Jobs whose ``done`` list the listener watches (no word of them comes to the inbox)."""
        self._listener: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._look_again = False
        self._redis_run_id: str | None = None
        self._looks: dict[str, asyncio.Future[JobResult | None]] = {}
        self._looking: asyncio.Task[None] | None = None

    async def remember_redis(self) -> None:
        """Note which Redis process this is (its ``run_id``), to tell a restart from an unknown id later."""
        with contextlib.suppress(RedisError, OSError):
            self._redis_run_id = str((await self.redis.info("server")).get("run_id") or "") or None

    async def wait(self, job_id: str, *, via_inbox: bool) -> JobResult:
        """The job's result once it is stored; JobNotFoundError once Redis holds neither it nor its job."""
        # The result may have been stored before the wait began: its word is then already read (or
        # still in the inbox); the result key covers both. One stored after this look is told by the
        # inbox, or by the job's ``done`` list, whose token stays until the listener reads it.
        try:
            existing = await self._first_look(job_id)
        except REDIS_DOWN:
            existing, self._look_again = None, True  # the listener looks once Redis is back
        if existing is not None:
            return existing
        future = self._futures.get(job_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._futures[job_id] = future
        if not via_inbox:
            self._by_done.add(job_id)
        self._waiting[job_id] += 1
        self._start_tasks()
        try:
            return await asyncio.shield(future)
        finally:
            self._waiting[job_id] -= 1
            if self._waiting[job_id] <= 0:
                del self._waiting[job_id]
                self._drop(job_id)

    async def _first_look(self, job_id: str) -> JobResult | None:
        """The job's result if it is stored already, looked up together with every other wait begun in
        the same turn of the loop: one MGET per 1,000 jobs (10,000 waits begun at once cost 10 round
        trips, not 10,000 commands queued for the producer's few connections)."""
        future = self._looks.get(job_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._looks[job_id] = future
            if self._looking is None:
                self._looking = asyncio.ensure_future(self._look_all())
        return await asyncio.shield(future)

    async def _look_all(self) -> None:
        await asyncio.sleep(0)  # the waits begun in this turn join the look
        looks, self._looks, self._looking = self._looks, {}, None
        job_ids = list(looks)
        try:
            for start in range(0, len(job_ids), LOOK_CHUNK):
                chunk = job_ids[start : start + LOOK_CHUNK]
                for job_id, result in zip(chunk, await self.store.get_results(chunk), strict=True):
                    if not looks[job_id].done():
                        looks[job_id].set_result(result)
        except REDIS_DOWN as exc:
            for future in looks.values():
                if not future.done():
                    future.set_exception(exc)

    async def close(self) -> None:
        for task in (self._listener, self._checker):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._listener = self._checker = None
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._by_done.clear()

    def _start_tasks(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_gone_forever())

    def _settle(self, job_id: str, result: JobResult) -> None:
        future = self._futures.pop(job_id, None)
        self._by_done.discard(job_id)
        if future is not None and not future.done():
            future.set_result(result)

    def _fail(self, job_id: str, error: JobNotFoundError) -> None:
        future = self._futures.pop(job_id, None)
        self._by_done.discard(job_id)
        if future is not None and not future.done():
            future.set_exception(error)

    def _drop(self, job_id: str) -> None:
        """No wait is left for the job: stop listening for it."""
        future = self._futures.pop(job_id, None)
        self._by_done.discard(job_id)
        if future is not None and not future.done():
            future.cancel()

    async def _listen(self) -> None:
        # A Redis outage (a restart) must not end the listener: every wait would then hang.
        while self._futures:
            try:
                if self._look_again:
                    self._look_again = False
                    await self._settle_finished()  # words read as the connection broke are lost
                await self._take_one()
            except REDIS_DOWN as exc:
                logger.warning("Redis unavailable while awaiting results (%s); retrying", exc)
                self._look_again = True
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _take_one(self) -> None:
        watched = {keys.done(job_id): job_id for job_id in self._by_done}
        item = await self.redis.blpop([self.inbox, *watched], timeout=LISTEN_BLOCK_SECONDS)
        if item is None:
            return
        key, value = item[0].decode(), item[1]
        if key == self.inbox:
            job_id = value.decode()
        else:
            job_id = watched[key]
            await self._put_back(key, job_id)
        if job_id not in self._futures:
            return
        result = await self.store.get_result(job_id)
        if result is not None:
            self._settle(job_id, result)

    async def _put_back(self, done_key: str, job_id: str) -> None:
        """Put a ``done`` token back for other waiters on the job, expiring with the result as before
        (the list went with its one token, and with it its TTL)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(done_key, b"1")
            pipe.pttl(keys.result(job_id))
            _, ttl_ms = await pipe.execute()
        await self.redis.pexpire(done_key, ttl_ms if ttl_ms > 0 else int(self.result_ttl * 1000))

    async def _settle_finished(self) -> None:
        job_ids = list(self._futures)
        for job_id, result in zip(job_ids, await self.store.get_results(job_ids), strict=True):
            if result is not None:
                self._settle(job_id, result)

    async def _check_gone_forever(self) -> None:
        if self._redis_run_id is None:
            await self.remember_redis()
        while self._futures:
            await asyncio.sleep(GONE_CHECK)
            with contextlib.suppress(*REDIS_DOWN):  # the listener reports Redis itself
                await self._check_gone()

    async def _check_gone(self) -> None:
        job_ids = list(self._futures)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.result(job_id))
                pipe.exists(keys.arq_job(job_id))
            replies = await pipe.execute()
        finished = [job_id for job_id, here in zip(job_ids, replies[::2], strict=True) if here]
        queued = {job_id for job_id, here in zip(job_ids, replies[1::2], strict=True) if here}
        # A result whose word went elsewhere (the job was submitted again by another producer) is
        # settled here; so is one stored between the two reads of a job that seemed gone: a last look.
        missing = [job_id for job_id in job_ids if job_id not in queued and job_id not in finished]
        looked = finished + missing
        results = await self.store.get_results(looked)
        lost = [job_id for job_id, result in zip(looked, results, strict=True) if result is None]
        for job_id, result in zip(looked, results, strict=True):
            if result is not None:
                self._settle(job_id, result)
        lost = [job_id for job_id in lost if job_id not in queued]
        if not lost:
            return
        why = await self._why_missing()
        for job_id in lost:
            self._fail(
                job_id,
                JobNotFoundError(
                    f"job {job_id} is not in Redis: neither queued, running nor finished, so it will "
                    f"never have a result. {why}",
                    job_ids=[job_id],
                ),
            )

    async def _why_missing(self) -> str:
        """Why Redis may no longer hold an awaited job, as precisely as Redis can tell."""
        ttls = f"job_ttl={self.job_ttl:g}s, result_ttl={self.result_ttl:g}s"
        try:
            info = await self.redis.info()
        except (RedisError, OSError):
            info = {}
        run_id = info.get("run_id")
        if self._redis_run_id and run_id and run_id != self._redis_run_id:
            self._redis_run_id = str(run_id)
            return (
                "Redis lost its data: it restarted while the job waited (its run_id changed) and came "
                "back without the job, as a Redis without persistence does (appendonly no and no RDB "
                "snapshot). Run Redis with persistence (appendonly yes) and submit the job again."
            )
        evicted = int(info.get("evicted_keys") or 0)
        if evicted:
            return (
                f"Redis lost its data: it evicted {evicted} key(s) to stay under maxmemory "
                f"(maxmemory-policy {info.get('maxmemory_policy', '?')}); llmqueue needs "
                "maxmemory-policy noeviction, and enough memory. Submit the job again."
            )
        return (
            "Either Redis lost its data (restarted without persistence, or evicted keys under "
            f"maxmemory), or the id is unknown to this Redis, or it outlived its {ttls}."
        )
