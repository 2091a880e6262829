"""Benchmark 3, queue overhead: jobs/s of one worker process against a bare loop of
``litellm.acompletion`` calls with the same concurrency in one process, with a provider that answers at
once and has no limits, so that the clients' own CPU is all there is to measure.

A raw aiohttp loop sending the same request shows what the HTTP round trip costs without LiteLLM, so
the difference is what LiteLLM itself costs per call. Rounds alternate (HTTP, LiteLLM, queue) so that
noise from other processes on the machine hits all three alike; each figure is the median round, and
the ratio the median of the rounds' own ratios (queue ÷ the LiteLLM loop of the same round).
With ``profile`` a separate worker runs the batch under pyinstrument (``bench.profiled_worker``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import profiles
from bench.clients import Clients
from bench.harness import (
    BenchError,
    Workers,
    child_pid,
    cpu_between,
    cpu_snapshot,
    flush,
    producer_settings,
    run_batch,
    warm_up,
    worker_env,
)
from bench.workloads import jobs
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

CONCURRENCY = 200  # llmqueue's default WORKER_MAX_JOBS
TARGET = 0.9


@dataclass(frozen=True)
class Sizes:
    jobs: int
    rounds: int


FULL = Sizes(jobs=3000, rounds=3)
QUICK = Sizes(jobs=300, rounds=1)
PROFILED_JOBS = 1000  # enough samples; a profiled worker runs at half speed

COLUMNS = {
    "client": "client",
    "jobs_per_second": "jobs/s",
    "ratio": "÷ bare LiteLLM",
    "client_cpu_ms": "client CPU ms/job",
    "provider_cpu_ms": "provider CPU ms/job",
    "redis_cpu_ms": "Redis CPU ms/job",
    "target": "target",
    "met": "met",
}


def run(quick: bool, profile: bool = False) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    batch_jobs = jobs("chat", sizes.jobs)
    rounds: dict[str, list[dict[str, float]]] = {"http": [], "litellm": [], "queue": []}
    profile_summary: dict[str, Any] | None = None
    with (
        tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch,
        EmbeddedRedis() as redis,
        ProviderProcess(ProviderConfig()) as provider,
    ):
        workdir = Path(scratch)
        provider_pid = child_pid("simulate-provider")
        if provider_pid is None:
            raise BenchError("cannot find the provider process")
        env = worker_env(redis.url, provider.base_url, worker_max_jobs=CONCURRENCY)
        options = {"count": sizes.jobs, "concurrency": CONCURRENCY, "workdir": workdir}
        with (
            Workers(env, workdir) as workers,
            Clients("http", provider.base_url, **options) as http,
            Clients("litellm", provider.base_url, **options) as bare,
        ):
            workers.scale_to(1)
            asyncio.run(warm_up_queue(redis.url, workers, batch_jobs[0]))
            http.run(warm_up=True)
            bare.run(warm_up=True)
            groups = {"client": http.pids + bare.pids, "worker": workers.pids, "provider": [provider_pid]}
            for _ in range(sizes.rounds):
                for name, clients in (("http", http), ("litellm", bare)):
                    before = cpu_snapshot({**groups, "client": clients.pids}, redis.url)
                    outcome = clients.run()
                    if outcome.failed:
                        raise BenchError(f"{name} loop: {outcome.failed} calls failed: {outcome.errors}")
                    used = cpu_between(before, cpu_snapshot({**groups, "client": clients.pids}, redis.url))
                    rounds[name].append(_figures(sizes.jobs, outcome.seconds, used["client"], used))
                flush(redis.url)
                before = cpu_snapshot(groups, redis.url)
                seconds = asyncio.run(queue_batch(redis.url, workers, batch_jobs))
                used = cpu_between(before, cpu_snapshot(groups, redis.url))
                rounds["queue"].append(_figures(sizes.jobs, seconds, used["worker"], used))
        if profile:
            profile_summary = profile_worker(redis.url, provider, workdir, batch_jobs[:PROFILED_JOBS], env)
    best = {name: median_round(figures) for name, figures in rounds.items()}
    bare_rate = best["litellm"]["jobs_per_second"]
    ratio = statistics.median(
        queue["jobs_per_second"] / bare["jobs_per_second"]
        for queue, bare in zip(rounds["queue"], rounds["litellm"], strict=True)
    )
    rows = [
        {"client": f"raw aiohttp POST loop, {CONCURRENCY} tasks", **best["http"]},
        {"client": f"bare litellm.acompletion loop, {CONCURRENCY} tasks", **best["litellm"], "ratio": 1.0},
        {
            "client": f"llmqueue: 1 worker process, max_jobs {CONCURRENCY}",
            **best["queue"],
            "ratio": ratio,
            "target": f"≥ {TARGET:g} x bare loop",
            "met": ratio >= TARGET,
        },
    ]
    rows[0]["ratio"] = best["http"]["jobs_per_second"] / bare_rate
    litellm_ms = best["litellm"]["client_cpu_ms"] - best["http"]["client_cpu_ms"]
    queue_ms = best["queue"]["client_cpu_ms"] - best["litellm"]["client_cpu_ms"]
    result: dict[str, Any] = {
        "title": "3. Queue overhead",
        "description": (
            f"{sizes.jobs} chat jobs, zero-latency provider without limits; median of {sizes.rounds} "
            "alternating round(s); client CPU = the sending process (the worker, for llmqueue)"
        ),
        "params": {"concurrency": CONCURRENCY, **sizes.__dict__},
        "columns": COLUMNS,
        "rows": rows,
        "rounds": rounds,
        "litellm_cpu_ms_per_call": litellm_ms,
        "queue_cpu_ms_per_job": queue_ms,
        "notes": [
            f"LiteLLM's own cost: {litellm_ms:.2f} ms CPU per call (bare LiteLLM loop minus raw aiohttp "
            "loop)",
            f"what the queue adds: {queue_ms:.2f} ms CPU per job in the worker (worker minus bare LiteLLM "
            "loop), plus Redis and the producer",
            "the worker, the provider and Redis share the machine's cores, so on a small machine jobs/s "
            "follows the total CPU per job",
        ],
    }
    if profile_summary is not None:
        result["profile"] = profile_summary
    return result


def median_round(figures: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median jobs/s (the lower middle one of an even count)."""
    ordered = sorted(figures, key=lambda f: f["jobs_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def _figures(count: int, seconds: float, client_cpu: float, used: dict[str, float]) -> dict[str, float]:
    return {
        "jobs_per_second": count / seconds,
        "seconds": seconds,
        "client_cpu_ms": client_cpu / count * 1000,
        "provider_cpu_ms": used["provider"] / count * 1000,
        "redis_cpu_ms": used["redis"] / count * 1000,
        "bench_cpu_ms": used["bench"] / count * 1000,
    }


async def warm_up_queue(redis_url: str, workers: Workers, job: dict[str, Any]) -> None:
    """Every worker has run a job, and a few dozen more have gone through before anything is measured."""
    async with Producer(producer_settings(redis_url)) as producer:
        await warm_up(producer, workers, job)
        # A few dozen more, so LiteLLM's lazily imported paths are loaded before anything is measured.
        await run_batch(producer, [job] * 50, timeout=60, workers=workers)


async def queue_batch(redis_url: str, workers: Workers, batch_jobs: list[dict[str, Any]]) -> float:
    """Seconds from the first submit to the last result of ``batch_jobs``; BenchError if one failed."""
    async with Producer(producer_settings(redis_url)) as producer:
        batch = await run_batch(producer, batch_jobs, timeout=600, workers=workers)
    if batch.succeeded != len(batch_jobs):
        raise BenchError(f"{len(batch_jobs) - batch.succeeded} queued jobs did not succeed")
    return batch.seconds


def profile_worker(
    redis_url: str,
    provider: ProviderProcess,
    workdir: Path,
    batch_jobs: list[dict[str, Any]],
    env: dict[str, str],
) -> dict[str, Any]:
    """Run the batch through one worker under pyinstrument; profile the batch only."""
    out = workdir / "worker.pyisession"
    command = [sys.executable, "-m", "bench.profiled_worker", str(out)]
    with Workers(env, workdir, command=command) as workers:
        workers.scale_to(1)
        asyncio.run(warm_up_queue(redis_url, workers, batch_jobs[0]))
        flush(redis_url)
        provider.control("reset")
        (pid,) = workers.pids
        os.kill(pid, signal.SIGUSR1)
        seconds = asyncio.run(queue_batch(redis_url, workers, batch_jobs))
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        workers.check_alive()
    if not out.exists():
        raise BenchError("the profiled worker wrote no profile")
    summary = profiles.summarize(out, len(batch_jobs))
    summary["jobs_per_second_while_profiled"] = len(batch_jobs) / seconds
    summary["text"] = profiles.render_text(out)
    return summary
