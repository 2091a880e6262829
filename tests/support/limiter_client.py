"""One contending process for the limiter test: acquire, then call the provider; repeat.

``python limiter_client.py REDIS_URL SCOPE RPM COUNT TASKS PROVIDER_URL``: counts itself in
``limiter-test:ready`` and waits until the key ``limiter-test:go`` exists (so every process starts at
once), then ``TASKS`` concurrent tasks make
``COUNT`` acquisitions in all from the shared bucket of ``SCOPE``, each followed by one chat request to
the provider. Prints the admissions it counted and the deferrals, ``{"admitted": n, "deferred": m}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from redis.asyncio import Redis

from llmqueue.limits.limiter import RateLimiter
from llmqueue.settings import LimitConfig

MAX_WAIT = 2.0  # the worker's default max_inline_wait: longer waits are not reserved


async def main(redis_url: str, scope: str, rpm: float, count: int, tasks: int, provider_url: str) -> None:
    redis = Redis.from_url(redis_url)
    limiter = RateLimiter(redis)
    limit = LimitConfig(rpm=rpm)
    remaining = count
    admitted = deferred = 0
    await redis.incr("limiter-test:ready")
    while not await redis.exists("limiter-test:go"):
        await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=provider_url, timeout=30) as client:

        async def contend() -> None:
            nonlocal remaining, admitted, deferred
            while remaining > 0:
                remaining -= 1
                while True:
                    admission = await limiter.acquire([(scope, limit)], max_wait=MAX_WAIT)
                    await asyncio.sleep(admission.wait)
                    if admission.admitted:
                        admitted += 1
                        break
                    deferred += 1
                body = {"model": "sim-model", "messages": [{"role": "user", "content": "x"}]}
                response = await client.post("/chat/completions", json=body)
                response.raise_for_status()
                if admission.reservation is not None:  # as a worker reports every answer
                    await admission.reservation.answered(None, {})

        await asyncio.gather(*(contend() for _ in range(tasks)))
    await redis.aclose()
    print(json.dumps({"admitted": admitted, "deferred": deferred}))


if __name__ == "__main__":
    url, scope_name, rate, total, concurrency, base_url = sys.argv[1:7]
    asyncio.run(main(url, scope_name, float(rate), int(total), int(concurrency), base_url))
