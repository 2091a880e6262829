"""What one queued job costs: Redis memory by key, and CPU to queue it (the producer's and Redis's).

``python -m bench.queued_job_cost``: a private Redis; ``Producer.submit_many`` of short chat jobs (the
scale benchmark's) and of prose prompts of 200, 1,000 and 2,000 characters (the docs' own text, which
compresses as English does). CPU is process time plus Redis's ``used_cpu``, best of three, so the
figures hold on a loaded machine where a wall-clock rate does not.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench.harness import flush, producer_settings
from bench.workloads import chat_job
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer

_DOCS = " ".join(path.read_text(encoding="utf-8") for path in sorted(Path("docs").rglob("*.md")))
_WARM_UP = 100


def prose_job(index: int, characters: int) -> dict[str, Any]:
    start = index * 37 % (len(_DOCS) - characters - 1)
    return {"messages": [{"role": "user", "content": _DOCS[start : start + characters]}]}


WORKLOADS: dict[str, tuple[Callable[[int], dict[str, Any]], int]] = {
    "short chat": (chat_job, 20_000),
    "200-character prompt": (lambda i: prose_job(i, 200), 10_000),
    "1,000-character prompt": (lambda i: prose_job(i, 1000), 10_000),
    "2,000-character prompt": (lambda i: prose_job(i, 2000), 10_000),
}


async def _enqueue(url: str, jobs: list[dict[str, Any]]) -> float:
    async with Producer(producer_settings(url)) as producer:
        await producer.submit_many(jobs[:_WARM_UP])
        started = time.process_time()
        await producer.submit_many(jobs[_WARM_UP:])
        return time.process_time() - started


def _server_cpu(client: redis_sync.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _bytes_by_key(client: redis_sync.Redis) -> dict[str, int]:
    """``MEMORY USAGE`` summed by key, a job's own keys grouped under their prefix."""
    sizes: dict[str, int] = defaultdict(int)
    for key in client.scan_iter(count=1000):
        name = key.decode()
        group = name.rsplit(":", 1)[0] + ":<id>" if name.startswith("arq:job:") else name
        sizes[group] += int(client.memory_usage(key, samples=0) or 0)  # type: ignore[arg-type]
    return sizes


def measure(url: str, make: Callable[[int], dict[str, Any]], count: int) -> dict[str, Any]:
    client = redis_sync.Redis.from_url(url)
    best: tuple[float, float] | None = None
    for _ in range(3):
        flush(url)
        jobs = [make(index) for index in range(count + _WARM_UP)]
        before_memory, before_cpu = int(client.info("memory")["used_memory"]), _server_cpu(client)  # type: ignore[index]
        producer_cpu = asyncio.run(_enqueue(url, jobs))
        server_cpu = _server_cpu(client) - before_cpu
        used = int(client.info("memory")["used_memory"]) - before_memory  # type: ignore[index]
        if best is None or producer_cpu + server_cpu < sum(best):
            best = (producer_cpu, server_cpu)
    assert best is not None
    total = count + _WARM_UP
    return {
        "bytes_per_job": used / total,
        "bytes_by_key": {key: size / total for key, size in _bytes_by_key(client).items()},
        "producer_us_per_job": best[0] / count * 1e6,
        "redis_us_per_job": best[1] / count * 1e6,
    }


def main() -> None:
    with EmbeddedRedis() as redis:
        for name, (make, count) in WORKLOADS.items():
            figures = measure(redis.url, make, count)
            cpu = figures["producer_us_per_job"] + figures["redis_us_per_job"]
            print(
                f"{name}: {figures['bytes_per_job']:,.0f} bytes per queued job; CPU "
                f"{figures['producer_us_per_job']:.1f} µs producer + {figures['redis_us_per_job']:.1f} µs "
                f"Redis ({1e6 / cpu:,.0f} jobs/s of CPU)"
            )
            for key, size in sorted(figures["bytes_by_key"].items(), key=lambda item: -item[1]):
                if size >= 1:
                    print(f"    {size:8.1f}  {key}")


if __name__ == "__main__":
    main()
