"""Benchmark 2, against the alternatives: the same jobs to the same rate-limited provider (benchmark 1's
chat set-up) through llmqueue with 4 workers, and through the clients a project would otherwise write:

(a) N asyncio tasks calling ``litellm.acompletion`` with OpenHands' tenacity retry policy and no
    shared limiter; (b) 4 such processes; (c) ``litellm.Router`` with the limit's rpm/tpm set on its
    deployment. See ``bench.clients`` for exactly what each does.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench.clients import Clients
from bench.harness import MachineCpu, Workers, queue_run, worker_env
from bench.ratelimit import JITTER, LATENCY, RPM, WINDOW, rate_figures
from bench.workloads import jobs
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

TASKS = 50  # per client process: ~3x what keeps a 3,000 RPM limit busy at 0.3 s a call
WORKERS = 4
# Half of benchmark 1's 2,000: each of the five set-ups starts its own processes and runs the set at
# ~50 calls/s, and the full suite should finish in about a quarter of an hour on a 2-core machine.
FULL_JOBS = 1000
QUICK_JOBS = 150

COLUMNS = {
    "client": "client",
    "wall_seconds": "wall s",
    "wall_vs_llmqueue": "÷ llmqueue wall",
    "goodput": "goodput",
    "wall_goodput": "goodput (wall)",
    "rate_limited": "429s",
    "rate_limited_share": "429s / requests",
    "failed": "failed jobs",
    "client_cpu_ms": "client CPU ms/job",
    "machine_busy": "machine CPU busy",
}

ALTERNATIVES = (
    (f"(a) tenacity, 1 process x {TASKS} tasks", "tenacity", 1),
    (f"(b) tenacity, 4 processes x {TASKS} tasks", "tenacity", 4),
    (f"(c) litellm.Router rpm={RPM}, {TASKS} tasks", "router", 1),
)


def run(quick: bool) -> dict[str, Any]:
    count = QUICK_JOBS if quick else FULL_JOBS
    batch_jobs = jobs("chat", count)
    rows: list[dict[str, Any]] = []
    config = ProviderConfig(rpm=RPM, window_seconds=WINDOW, latency=LATENCY, latency_jitter=JITTER, seed=1)
    with (
        tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch,
        EmbeddedRedis() as redis,
        ProviderProcess(config) as provider,
    ):
        workdir = Path(scratch)
        with Workers(worker_env(redis.url, provider.base_url, llm_rpm=RPM), workdir) as workers:
            workers.scale_to(WORKERS)
            queued = asyncio.run(
                queue_run(redis.url, provider, workers, batch_jobs, timeout=count / RPM * 60 * 3 + 120)
            )
        batch = queued.batch
        rows.append(
            {
                "client": f"llmqueue, {WORKERS} worker processes",
                **rate_figures(count, batch.seconds, batch.succeeded, queued.stats, rpm=RPM, tpm=None),
                "client_cpu_ms": queued.worker_cpu_seconds / count * 1000,
                "machine_busy": queued.machine_busy,
            }
        )
        for label, mode, processes in ALTERNATIVES:
            options = {"count": count, "processes": processes, "concurrency": TASKS, "rpm": RPM}
            with Clients(mode, provider.base_url, workdir=workdir, **options) as clients:
                clients.run(warm_up=True)
                provider.control("reset")
                machine = MachineCpu()
                outcome = clients.run()
                busy = machine.busy()
                stats = provider.stats()
            figures = rate_figures(count, outcome.seconds, outcome.succeeded, stats, rpm=RPM, tpm=None)
            rows.append(
                {
                    "client": label,
                    **figures,
                    "client_cpu_ms": outcome.cpu_seconds / count * 1000,
                    "machine_busy": busy,
                    "errors": outcome.errors,
                }
            )
    for row in rows:
        row["wall_vs_llmqueue"] = row["wall_seconds"] / rows[0]["wall_seconds"]
    return {
        "title": "2. Against the alternatives",
        "description": (
            f"{count} chat jobs, provider limit {RPM:,} RPM over a {WINDOW:g} s bucket, latency "
            f"{LATENCY:g} s ± {JITTER:.0%}; goodput as in benchmark 1"
        ),
        "params": {"jobs": count, "tasks_per_process": TASKS, "workers": WORKERS, "rpm": RPM},
        "columns": COLUMNS,
        "rows": rows,
        "notes": [
            "tenacity: wait_exponential(multiplier=2, min=5, max=30), 5 attempts (1 + num_retries=4, "
            "llmqueue's retry budget), retrying LiteLLM's RateLimit/Connection/5xx/Timeout errors",
            "Router: usage-based-routing-v2 (enforces the deployment's rpm/tpm per minute), num_retries=4",
            "failed jobs ran out of retries; they count against goodput but not against wall time",
        ],
    }
