"""Everything a Redis database holds, as one text: what the secrets tests search for keys and passwords."""

from __future__ import annotations

from redis.asyncio import Redis


async def everything_in(redis: Redis) -> str:
    """Every key and value in the database, one ``key value`` line each."""
    parts: list[str] = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: object = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = await redis.smembers(key)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)
