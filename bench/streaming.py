"""Benchmark: streaming. One job at a time with ``params.stream``, beside ``litellm.acompletion(stream=True)``
called directly from the same process, against a provider that takes 50 ms and then sends one word every
20 ms.

- time to first token: from the call (direct) or from ``submit`` (queued) to the first content delta in
  the caller's hands;
- the first delta's delivery: from the provider writing the first content chunk to ``handle.stream()``
  yielding it. Both clocks are this machine's monotonic clock (the provider runs in its own process).

Calls alternate (direct, queued), each ``SETTLE`` seconds after the one before, as in the agent-step
latency benchmark.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import litellm

from bench.harness import BenchError, Workers, producer_settings, warm_up, worker_env
from bench.measures import percentile
from bench.workloads import call_kwargs
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

LATENCY = 0.05
CHUNK_DELAY = 0.02
WORDS = 12
DELIVERY_TARGET_MS = 50.0
FULL_SAMPLES = 100
QUICK_SAMPLES = 10
SETTLE = 0.02
DIRECT = "litellm.acompletion(stream=True), direct"
QUEUED = "llmqueue, 1 worker: submit → handle.stream()"

COLUMNS = {
    "client": "client",
    "ttft_p50_ms": "first token p50 ms",
    "ttft_p99_ms": "first token p99 ms",
    "p50_overhead_ms": "p50 overhead ms",
    "p99_overhead_ms": "p99 overhead ms",
    "delivery_p50_ms": "first delta delivery p50 ms",
    "delivery_p99_ms": "first delta delivery p99 ms",
    "target": "target",
    "met": "met",
}


def streamed_job(index: int) -> dict[str, Any]:
    words = " ".join(f"w{index}-{n}" for n in range(WORDS))
    return {"messages": [{"role": "user", "content": words}], "params": {"stream": True}}


def run(quick: bool) -> dict[str, Any]:
    samples = QUICK_SAMPLES if quick else FULL_SAMPLES
    config = ProviderConfig(latency=LATENCY, stream_chunk_delay=CHUNK_DELAY)
    with (
        tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch,
        EmbeddedRedis() as redis,
        ProviderProcess(config) as provider,
        Workers(worker_env(redis.url, provider.base_url), Path(scratch)) as workers,
    ):
        workers.scale_to(1)
        direct, queued, delivery = asyncio.run(_measure(redis.url, provider, workers, samples))
    direct_p50, direct_p99 = percentile(direct, 0.5), percentile(direct, 0.99)
    queued_p50, queued_p99 = percentile(queued, 0.5), percentile(queued, 0.99)
    delivery_p50 = percentile(delivery, 0.5)
    rows = [
        {"client": DIRECT, "ttft_p50_ms": direct_p50, "ttft_p99_ms": direct_p99},
        {
            "client": QUEUED,
            "ttft_p50_ms": queued_p50,
            "ttft_p99_ms": queued_p99,
            "p50_overhead_ms": queued_p50 - direct_p50,
            "p99_overhead_ms": queued_p99 - direct_p99,
            "delivery_p50_ms": delivery_p50,
            "delivery_p99_ms": percentile(delivery, 0.99),
            "target": f"first delta delivery p50 ≤ {DELIVERY_TARGET_MS:g} ms",
            "met": delivery_p50 <= DELIVERY_TARGET_MS,
        },
    ]
    return {
        "title": "Streaming",
        "description": (
            f"{samples} sequential streamed calls each; provider latency {LATENCY * 1000:g} ms, then one "
            f"word every {CHUNK_DELAY * 1000:g} ms"
        ),
        "params": {"samples": samples, "provider_latency": LATENCY, "chunk_delay": CHUNK_DELAY},
        "columns": COLUMNS,
        "rows": rows,
        "notes": [
            "first token: call (direct) or submit (queued) → the first content delta in the caller's hands",
            "overhead: the queued percentile minus the direct call's",
            "first delta delivery: the provider writing the first content chunk → handle.stream() "
            "yielding it (one monotonic clock for both processes)",
        ],
    }


async def _measure(
    redis_url: str, provider: ProviderProcess, workers: Workers, samples: int
) -> tuple[list[float], list[float], list[float]]:
    direct: list[float] = []
    queued: list[float] = []
    delivery: list[float] = []
    async with Producer(producer_settings(redis_url)) as producer:
        await warm_up(producer, workers, streamed_job(0))
        for index in range(5):
            await _direct_first_token(call_kwargs(streamed_job(index), provider.base_url))
        for index in range(samples):
            job = streamed_job(index)
            await asyncio.sleep(SETTLE)
            direct.append(await _direct_first_token(call_kwargs(job, provider.base_url)) * 1000)
            await asyncio.sleep(SETTLE)
            chunks_before = len(provider.stats()["stream_chunk_times"])
            started = time.monotonic()
            handle = await producer.submit(job)
            first: float | None = None
            async for event in handle.stream():
                if first is None and event.kind == "delta" and event.text:
                    first = time.monotonic()
            result = await handle.result(timeout=30)
            if not result.ok or first is None:
                raise BenchError(f"streamed job failed or sent no delta: {result.error}")
            queued.append((first - started) * 1000)
            sent = provider.stats()["stream_chunk_times"][chunks_before]
            delivery.append((first - sent) * 1000)
    return direct, queued, delivery


async def _direct_first_token(kwargs: dict[str, Any]) -> float:
    """Seconds from the call to its first content chunk; the rest of the stream is read out."""
    started = time.monotonic()
    first: float | None = None
    stream = await litellm.acompletion(**kwargs)
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic()
    if first is None:
        raise BenchError("the direct stream sent no content")
    return first - started
