"""Benchmark 1, rate-limit efficiency: how much of a provider's limit the workers turn into successful
calls, and how many 429s they draw on the way, with 1, 2 and 4 worker processes sharing one limit.

The provider enforces its limits as hosted providers do, over a short window (a bucket holding
``WINDOW`` seconds of the rate), so a client that sends a minute's allowance in a burst is refused.
Two workloads: short chat jobs, where the requests-per-minute limit binds, and long prompts under a
tokens-per-minute limit set so that tokens bind (about half the RPM limit), where the workers'
estimate-then-reconcile token accounting decides how close they get.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import QueueRun, Workers, queue_run, worker_env
from bench.measures import provider_figures
from bench.workloads import LONG_PROMPT_TOKENS, MODEL, Workload, jobs
from llmqueue.limits.tokens import estimate_tokens
from llmqueue.models import Job
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.limits import estimate_prompt_tokens
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

RPM = 3000
TPM = 1_500_000  # ~1,470 long jobs a minute: tokens bind well below the 3,000 RPM
WINDOW = 1.0  # seconds of the rate the provider's buckets hold
LATENCY = 0.3
JITTER = 0.5
DEFAULT_COMPLETION_TOKENS = 1024  # llmqueue's default: what a worker reserves when a job sets no max_tokens
GOODPUT_TARGET = {"chat": 0.95, "long": 0.90}
RATE_LIMITED_TARGET = 0.01
TARGET_WORKERS = 4


@dataclass(frozen=True)
class Sizes:
    chat_jobs: int
    long_jobs: int
    worker_counts: tuple[int, ...]


FULL = Sizes(chat_jobs=2000, long_jobs=1000, worker_counts=(1, 2, 4))
QUICK = Sizes(chat_jobs=200, long_jobs=100, worker_counts=(4,))

COLUMNS = {
    "workload": "workload",
    "workers": "workers",
    "workers_tpm": "workers' tpm",
    "jobs": "jobs",
    "wall_seconds": "wall s",
    "goodput": "goodput",
    "wall_goodput": "goodput (wall)",
    "rate_limited": "429s",
    "rate_limited_share": "429s / requests",
    "failed": "failed",
    "client_cpu_ms": "worker CPU ms/job",
    "machine_busy": "machine CPU busy",
    "target": "target",
    "met": "met",
}


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch, EmbeddedRedis() as redis:
        workdir = Path(scratch)
        chat = chat_provider()
        with (
            ProviderProcess(chat) as provider,
            Workers(worker_env(redis.url, provider.base_url, llm_rpm=RPM), workdir) as workers,
        ):
            for count in sizes.worker_counts:
                workers.scale_to(count)
                rows.append(measure(redis.url, provider, workers, "chat", sizes.chat_jobs))
        long = chat.model_copy(update={"tpm": TPM})
        with ProviderProcess(long) as provider:
            env = worker_env(redis.url, provider.base_url, llm_rpm=RPM, llm_tpm=TPM)
            with Workers(env, workdir) as workers:
                workers.scale_to(TARGET_WORKERS)
                measured = measure(redis.url, provider, workers, "long", sizes.long_jobs)
                measured["workers_tpm"] = TPM
                rows.append(measured)
    return {
        "title": "1. Rate-limit efficiency",
        "description": (
            f"provider limit {RPM:,} RPM ({TPM:,} TPM for long prompts) over a {WINDOW:g} s bucket, "
            f"latency {LATENCY:g} s ± {JITTER:.0%}; goodput = successful calls (tokens for 'long') per "
            "minute / limit, after the provider's initially full bucket"
        ),
        "params": {
            "rpm": RPM,
            "tpm": TPM,
            "window_seconds": WINDOW,
            "latency": LATENCY,
            "latency_jitter": JITTER,
            "long_prompt_tokens": LONG_PROMPT_TOKENS,
            **sizes.__dict__,
        },
        "columns": COLUMNS,
        "rows": rows,
        "notes": [
            "goodput counts what the provider admitted and answered: (successes - one full bucket) / "
            "(rate x time from first request to last success); 1.0 is the most any client can get",
            "goodput (wall) = completed jobs (tokens) per minute from first submit to last result / limit, "
            "burst included",
            "machine CPU busy = share of all cores' time busy during the batch (every process on the "
            "machine): near 100% the workers were short of CPU, not of rate limit",
            f"long prompts: each worker reserves {reserved_tokens()} tokens per job (prompt + "
            f"{DEFAULT_COMPLETION_TOKENS} completion tokens, no max_tokens) and is charged "
            f"{charged_tokens()}; the provider's rate-limit headers correct the estimate (the usage is not "
            "used: the provider's limiter counts its own way)",
            "workers' tpm: the limit the workers were given, exactly the provider's",
        ],
    }


def chat_provider() -> ProviderConfig:
    """The provider of the chat workload: ``RPM`` over a ``WINDOW`` bucket, ``LATENCY`` ± ``JITTER``."""
    return ProviderConfig(rpm=RPM, window_seconds=WINDOW, latency=LATENCY, latency_jitter=JITTER, seed=1)


def measure(
    redis_url: str, provider: ProviderProcess, workers: Workers, workload: Workload, count: int
) -> dict[str, Any]:
    tpm = TPM if workload == "long" else None
    expected = count / ((tpm / charged_tokens()) if tpm else RPM) * 60
    outcome = asyncio.run(
        queue_run(redis_url, provider, workers, jobs(workload, count), timeout=3 * expected + 120)
    )
    return row(workload, len(workers.pids), count, outcome, tpm=tpm)


def row(workload: str, workers: int, count: int, outcome: QueueRun, *, tpm: float | None) -> dict[str, Any]:
    batch = outcome.batch
    result = {
        "workload": workload,
        "workers": workers,
        "jobs": count,
        **rate_figures(count, batch.seconds, batch.succeeded, outcome.stats, rpm=RPM, tpm=tpm),
        "client_cpu_ms": outcome.worker_cpu_seconds / count * 1000,
        "machine_busy": outcome.machine_busy,
    }
    if workers == TARGET_WORKERS:
        wanted = GOODPUT_TARGET[workload]
        result["target"] = f"goodput ≥ {wanted:g}, 429s ≤ {RATE_LIMITED_TARGET:.0%}"
        result["met"] = result["goodput"] >= wanted and result["rate_limited_share"] <= RATE_LIMITED_TARGET
    return result


def rate_figures(
    count: int, seconds: float, succeeded: int, stats: dict[str, Any], *, rpm: float, tpm: float | None
) -> dict[str, Any]:
    """Goodput, 429s and failures of one run against the limited provider (used by the alternatives too).

    Goodput is in tokens when ``tpm`` is given, else in requests.
    """
    figures = provider_figures(stats, rpm=rpm, tpm=tpm, window=WINDOW)
    if tpm is not None:
        goodput = figures.get("tpm_goodput", 0.0)
        wall_goodput = figures.get("tokens", 0) / seconds * 60 / tpm
    else:
        goodput = figures.get("rpm_goodput", 0.0)
        wall_goodput = figures["succeeded"] / seconds * 60 / rpm
    return {
        "wall_seconds": seconds,
        "goodput": goodput,
        "wall_goodput": wall_goodput,
        "rate_limited": figures["rate_limited"],
        "rate_limited_share": figures["rate_limited_share"],
        "requests": figures["requests"],
        "failed": count - succeeded,
        "provider": figures,
    }


def charged_tokens() -> int:
    """What the provider charges for one long job: its prompt count plus its fixed completion."""
    messages = jobs("long", 1)[0]["messages"]
    return estimate_prompt_tokens(messages) + ProviderConfig().completion_tokens


def reserved_tokens() -> int:
    """What a worker reserves for one long job before the call."""
    return estimate_tokens(Job.parse(jobs("long", 1)[0]), MODEL, DEFAULT_COMPLETION_TOKENS)
