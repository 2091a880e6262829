"""Benchmark 4, agent-step latency: one job at a time, submit → result, against a provider that takes
50 ms, beside ``litellm.acompletion`` called directly from the same process.

An agent waits for each step's answer before it sends the next, so what matters is the time the queue
adds to one call. Two workers on separate queues, one with llmqueue's default poll delay and one with
a short one, show how much of that time is an idle worker noticing the new job. Calls alternate
(direct, default, short poll) so that noise hits all three alike; each queued job's own timestamps
split its time into pick-up, time in the worker and delivery of the result.

Each call starts ``SETTLE`` seconds after the one before, as an agent's next step starts after it has
read the last answer. Back to back, the call after the direct one paid for that call's LiteLLM
post-processing, which runs in this process after the answer is returned (logging tasks and threads):
~1.2 ms more pick-up for whichever queue came next, which had been read as the default poll delay's
cost.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import litellm

from bench.harness import BenchError, Workers, producer_settings, warm_up, worker_env
from bench.measures import percentile
from bench.workloads import call_kwargs, chat_job
from llmqueue.models import Timings
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer
from llmqueue.settings import WorkerConfig
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

LATENCY = 0.05
TARGET_MS = 5.0
FULL_SAMPLES = 200
QUICK_SAMPLES = 20
DEFAULT_POLL_DELAY = WorkerConfig().poll_delay
SHORT_POLL_DELAY = 0.005
SETTLE = 0.02
QUEUES = {
    f"llmqueue, 1 worker, poll delay {DEFAULT_POLL_DELAY * 1000:g} ms (default)": (
        "bench:latency:default",
        DEFAULT_POLL_DELAY,
    ),
    f"llmqueue, 1 worker, poll delay {SHORT_POLL_DELAY * 1000:g} ms": (
        "bench:latency:short",
        SHORT_POLL_DELAY,
    ),
}
DIRECT = "litellm.acompletion, direct"

COLUMNS = {
    "client": "client",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "p50_overhead_ms": "p50 overhead ms",
    "p99_overhead_ms": "p99 overhead ms",
    "p50_pick_up_ms": "p50 pick-up ms",
    "p50_in_worker_ms": "p50 in worker ms",
    "p50_delivery_ms": "p50 delivery ms",
    "target": "target",
    "met": "met",
}


def run(quick: bool) -> dict[str, Any]:
    samples = QUICK_SAMPLES if quick else FULL_SAMPLES
    with (
        tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch,
        EmbeddedRedis() as redis,
        ProviderProcess(ProviderConfig(latency=LATENCY)) as provider,
        ExitStack() as stack,
    ):
        pools = {}
        for label, (queue, delay) in QUEUES.items():
            env = worker_env(redis.url, provider.base_url, worker_queue_name=queue, worker_poll_delay=delay)
            pools[label] = stack.enter_context(Workers(env, Path(scratch)))
            pools[label].scale_to(1)
        times, stages = asyncio.run(_measure(redis.url, provider.base_url, pools, samples))
    direct_p50, direct_p99 = percentile(times[DIRECT], 0.5), percentile(times[DIRECT], 0.99)
    rows = [{"client": DIRECT, "p50_ms": direct_p50, "p99_ms": direct_p99}]
    for label in QUEUES:
        p50, p99 = percentile(times[label], 0.5), percentile(times[label], 0.99)
        overhead = p50 - direct_p50
        rows.append(
            {
                "client": label,
                "p50_ms": p50,
                "p99_ms": p99,
                "p50_overhead_ms": overhead,
                "p99_overhead_ms": p99 - direct_p99,
                **{
                    f"p50_{stage}_ms": percentile([sample[stage] for sample in stages[label]], 0.5)
                    for stage in ("pick_up", "in_worker", "delivery")
                },
                "target": f"p50 overhead ≤ {TARGET_MS:g} ms",
                "met": overhead <= TARGET_MS,
            }
        )
    return {
        "title": "4. Agent-step latency",
        "description": (
            f"{samples} sequential calls each, provider latency {LATENCY * 1000:g} ms, submit → result"
        ),
        "params": {"samples": samples, "provider_latency": LATENCY},
        "columns": COLUMNS,
        "rows": rows,
        "samples_ms": times,
        "notes": [
            "overhead = the queue's percentile minus the direct call's",
            "stages (medians): pick-up = submit → the worker starts the job (enqueue, the idle worker "
            "noticing it, arq's claim); in worker = start → result built (the provider call included); "
            "delivery = result built → in the caller's hands",
        ],
    }


async def _measure(
    redis_url: str, base_url: str, pools: dict[str, Workers], samples: int
) -> tuple[dict[str, list[float]], dict[str, list[dict[str, float]]]]:
    times: dict[str, list[float]] = {DIRECT: [], **{label: [] for label in QUEUES}}
    stages: dict[str, list[dict[str, float]]] = {label: [] for label in QUEUES}
    async with AsyncExitStack() as stack:
        producers = {
            label: await stack.enter_async_context(Producer(producer_settings(redis_url, queue)))
            for label, (queue, _) in QUEUES.items()
        }
        for label, producer in producers.items():
            await warm_up(producer, pools[label], chat_job(0))
        for index in range(5):
            await litellm.acompletion(**call_kwargs(chat_job(index), base_url))
        for index in range(samples):
            job = chat_job(index)
            kwargs = call_kwargs(job, base_url)
            await asyncio.sleep(SETTLE)
            started = time.perf_counter()
            await litellm.acompletion(**kwargs)
            times[DIRECT].append((time.perf_counter() - started) * 1000)
            for label, producer in producers.items():
                await asyncio.sleep(SETTLE)
                started = time.perf_counter()
                handle = await producer.submit(job)
                result = await handle.result(timeout=30)
                times[label].append((time.perf_counter() - started) * 1000)
                received = datetime.now(UTC)
                if not result.ok:
                    raise BenchError(f"{label}: job failed: {result.error}")
                stages[label].append(_stages(result.timings, received))
    return times, stages


def _stages(timings: Timings, received: datetime) -> dict[str, float]:
    """Milliseconds from submit to pick-up, in the worker, and from the stored result to the caller.

    All three clocks are this machine's wall clock: the producer stamps ``queued_at``, the worker
    ``started_at`` and ``finished_at`` (as it builds the result), this process ``received``.
    """
    assert timings.started_at is not None
    return {
        "pick_up": (timings.started_at - timings.queued_at).total_seconds() * 1000,
        "in_worker": (timings.finished_at - timings.started_at).total_seconds() * 1000,
        "delivery": (received - timings.finished_at).total_seconds() * 1000,
    }
