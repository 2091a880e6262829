"""Responses kept in Redis (``[cache] backend = "redis"``), for a long-running Redis shared by many hosts.

Each response is a string key expiring after the TTL; a sorted set orders them by last use and a hash
holds their sizes, so a put evicts the least recently used while the total is over ``max_bytes``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.cache.store import CacheStats

_PUT = resources.files("llmqueue.cache").joinpath("lua", "put.lua").read_text(encoding="utf-8")
_TOTAL = "__total__"
_SCAN_CHUNK = 500


class RedisStore:
    """Responses under ``llmqueue:cache:*``; ``ttl`` seconds (None: none), ``max_bytes`` in all."""

    def __init__(self, redis: Redis, *, ttl: float | None, max_bytes: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._put = redis.register_script(_PUT)

    async def get(self, key: str) -> dict[str, Any] | None:
        body = await self.redis.get(keys.cache_entry(key))
        if body is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hincrby(keys.cache_sizes(), "__hits__", 1)
            (seconds, micros), _ = await pipe.execute()
        await self.redis.zadd(keys.cache_index(), {key: seconds + micros / 1e6}, xx=True)
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    async def has(self, key: str) -> bool:
        return bool(await self.redis.exists(keys.cache_entry(key)))

    async def put(self, key: str, response: dict[str, Any]) -> None:
        body = json.dumps(response, separators=(",", ":"), ensure_ascii=False)
        ttl_ms = int(self.ttl * 1000) if self.ttl is not None else 0
        await self._put(
            keys=[keys.cache_entry(key), keys.cache_index(), keys.cache_sizes()],
            args=[key, body, ttl_ms, self.max_bytes, keys.cache_entry("")],
        )

    async def stats(self) -> CacheStats:
        await self._forget_expired()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.cache_index())
            pipe.hmget(keys.cache_sizes(), [_TOTAL, "__hits__"])
            entries, (total, hits) = await pipe.execute()
        return CacheStats(
            backend="redis",
            location="llmqueue:cache:* in the queue's Redis",
            entries=int(entries),
            bytes=int(total or 0),
            hits=int(hits or 0),
            max_bytes=self.max_bytes,
            ttl=self.ttl,
        )

    async def clear(self) -> int:
        count = 0
        while members := await self.redis.zrange(keys.cache_index(), 0, _SCAN_CHUNK - 1):
            names = [member.decode() for member in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*[keys.cache_entry(name) for name in names])
                pipe.zrem(keys.cache_index(), *names)
                await pipe.execute()
            count += len(names)
        await self.redis.delete(keys.cache_sizes())
        return count

    async def close(self) -> None:
        """Nothing to close: the Redis client belongs to the caller."""

    async def _forget_expired(self) -> None:
        """Drop index entries whose response expired (TTL), so the counts describe what is there."""
        start = 0
        while members := await self.redis.zrange(keys.cache_index(), start, start + _SCAN_CHUNK - 1):
            names = [member.decode() for member in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(keys.cache_entry(name))
                alive = await pipe.execute()
            gone = [name for name, exists in zip(names, alive, strict=True) if not exists]
            if gone:
                sizes = await self.redis.hmget(keys.cache_sizes(), gone)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(keys.cache_index(), *gone)
                    pipe.hdel(keys.cache_sizes(), *gone)
                    pipe.hincrby(keys.cache_sizes(), _TOTAL, -sum(int(s or 0) for s in sizes))
                    await pipe.execute()
            start += len(names) - len(gone)
