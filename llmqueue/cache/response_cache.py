"""The cache as the runner uses it: look up before the limiter, store after a success, one call at a time.

"One call at a time": the first job to miss on a key claims it in the queue's Redis (``keys.cache_flight``)
and makes the call; an identical job arriving meanwhile, in any worker process, is told to look again
shortly instead of calling too. The claim is released when the call ends, stored or not (a failed call
is never cached, so the next job calls), and expires on its own if its worker dies.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmqueue import keys
from llmqueue.cache.disk import DiskStore
from llmqueue.cache.redis_store import RedisStore
from llmqueue.cache.store import CacheStore
from llmqueue.settings import CacheConfig

logger = logging.getLogger("llmqueue.cache")

FOLLOW_INTERVAL = 0.25
"""Seconds a job waits before looking again while an identical request is being made."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_STORE_ERRORS = (sqlite3.Error, RedisError, OSError, ValueError)


@dataclass(frozen=True)
class CacheLookup:
    """What :meth:`ResponseCache.lookup` found: a ``response`` (a hit), a ``wait`` (someone else is
    calling), or neither (a miss this job now owns: it calls, then stores or releases)."""

    key: str
    response: dict[str, Any] | None = None
    wait: float | None = None


def open_store(config: CacheConfig, redis: Redis | None = None) -> CacheStore:
    """The store ``config`` names: a SQLite file under its directory, or ``redis`` (which must be given)."""
    max_bytes = int(config.max_size_mb * 1024 * 1024)
    if config.backend == "redis":
        if redis is None:
            raise ValueError("the redis cache backend needs a Redis client")
        return RedisStore(redis, ttl=config.ttl, max_bytes=max_bytes)
    return DiskStore(config.resolved_dir(), ttl=config.ttl, max_bytes=max_bytes)


class ResponseCache:
    """A :class:`CacheStore` plus the one-call-at-a-time claims, for the workers of one Redis.

    A store that fails (a locked or damaged file, Redis trouble) costs a cache miss and a warning, never
    the job: the call is made as if there were no cache.
    """

    def __init__(self, backend: CacheStore, redis: Redis, *, claim_seconds: float) -> None:
        self.backend = backend
        self.redis = redis
        self.claim_ms = int(claim_seconds * 1000)
        self._release = redis.register_script(_RELEASE)

    async def lookup(self, key: str, job_id: str) -> CacheLookup:
        """A hit, a wait, or a miss that ``job_id`` now owns (see :class:`CacheLookup`)."""
        response = await read_answer(self.backend, key, instead="calling the provider")
        if response is not None:
            return CacheLookup(key, response=response)
        flight = keys.cache_flight(key)
        if await self.redis.set(flight, job_id, nx=True, px=self.claim_ms):
            return CacheLookup(key)
        owner = await self.redis.get(flight)
        if owner is None or owner.decode() == job_id:  # just released, or this job's own (a restart)
            await self.redis.set(flight, job_id, px=self.claim_ms)
            return CacheLookup(key)
        return CacheLookup(key, wait=FOLLOW_INTERVAL)

    async def store(self, key: str, response: dict[str, Any]) -> None:
        """Keep a successful call's response."""
        try:
            await self.backend.put(key, response)
        except _STORE_ERRORS as exc:
            logger.warning("response cache: could not store an answer (%s)", exc)

    async def release(self, key: str, job_id: str) -> None:
        """End ``job_id``'s claim on ``key`` (after storing, or after a failed call)."""
        await self._release(keys=[keys.cache_flight(key)], args=[job_id])

    async def close(self) -> None:
        await self.backend.close()


async def read_answer(store: CacheStore, key: str, *, instead: str) -> dict[str, Any] | None:
    """The answer ``store`` keeps under ``key``, or None. A store that cannot be read costs a miss and a
    warning that says what happens ``instead``, never the job."""
    try:
        return await store.get(key)
    except _STORE_ERRORS as exc:
        logger.warning("response cache: lookup failed, %s (%s)", instead, exc)
        return None
