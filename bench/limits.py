"""Benchmark: limits that always hold (issue 11). Four worker processes, a provider whose key allows
``RPM`` over a 1 s bucket with 0.3 s latency, and jobs that name their own model (not ``LLM_MODEL``):

- (a) ``LLM_RPM`` exactly the key's limit;
- (b) ``LLM_TPM`` exactly the key's limit, long prompts with ``max_tokens``, the provider counting
  characters/4 plus ``max_tokens`` (as OpenAI's limiter does), the workers LiteLLM's tokenizer;
- (c) no limit given: the workers learn it from the provider's ``x-ratelimit-*`` headers;
- (d) ``LLM_RPM`` the key's limit, but another client takes 30% of the key.

Each scenario runs ``rounds`` times; the median round is reported.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.harness import Workers, queue_run, worker_env
from bench.ratelimit import rate_figures
from bench.workloads import jobs
from llmqueue.limits.limiter import RateLimiter
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

RPM = 1800
TPM = 1_200_000  # long jobs cost ~1,270 tokens: ~940 a minute, tokens bind well below RPM
LATENCY = 0.3
WORKERS = 4
OWN_MODEL = "openai/bench-own-model"  # what every line names; LLM_MODEL is another
MAX_TOKENS = 256
OTHER_CLIENT_SHARE = 0.3


@dataclass(frozen=True)
class Scenario:
    name: str
    workload: str
    provider: dict[str, Any]
    workers: dict[str, float]
    goodput_target: float | None
    rate_limited_target: float


SCENARIOS = (
    Scenario("a: --rpm = key's", "chat", {"rpm": RPM}, {"llm_rpm": RPM}, 0.97, 0.005),
    Scenario("b: --tpm = key's", "long", {"rpm": RPM, "tpm": TPM}, {"llm_tpm": TPM}, 0.93, 0.005),
    Scenario("c: no limit, headers", "chat", {"rpm": RPM}, {}, 0.90, 0.02),
    Scenario(
        "d: other client 30%",
        "chat",
        {"rpm": RPM, "other_client_share": OTHER_CLIENT_SHARE},
        {"llm_rpm": RPM},
        None,
        0.02,
    ),
)

FULL_JOBS = {"chat": 600, "long": 400}
QUICK_JOBS = {"chat": 300, "long": 200}

COLUMNS = {
    "scenario": "scenario",
    "jobs": "jobs",
    "wall_seconds": "wall s",
    "goodput": "goodput",
    "rate_limited": "429s",
    "rate_limited_share": "429s / requests",
    "failed": "failed",
    "others_share": "others' share learnt",
    "rounds": "rounds",
    "target": "target",
    "met": "met",
}


def own_model_jobs(workload: str, count: int) -> list[dict[str, Any]]:
    made = jobs("long" if workload == "long" else "chat", count)
    extra: dict[str, Any] = {"model": OWN_MODEL}
    if workload == "long":
        extra["params"] = {"max_tokens": MAX_TOKENS}
    return [{**job, **extra} for job in made]


def run(quick: bool) -> dict[str, Any]:
    counts = QUICK_JOBS if quick else FULL_JOBS
    rounds = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch, EmbeddedRedis() as redis:
        for scenario in SCENARIOS:
            config = ProviderConfig(latency=LATENCY, window_seconds=1.0, seed=1, **scenario.provider)
            with ProviderProcess(config) as provider:
                env = worker_env(redis.url, provider.base_url, **scenario.workers)
                with Workers(env, Path(scratch)) as workers:
                    workers.scale_to(WORKERS)
                    measured = [
                        measure(redis.url, provider, workers, scenario, counts[scenario.workload])
                        for _ in range(rounds)
                    ]
            rows.append(median_row(scenario, measured))
    return {
        "title": "Limits that always hold",
        "description": (
            f"{WORKERS} workers; provider {RPM:,} RPM ({TPM:,} TPM for (b)) over a 1 s bucket, latency "
            f"{LATENCY:g} s; every line names {OWN_MODEL}, LLM_MODEL is another"
        ),
        "params": {
            "rpm": RPM,
            "tpm": TPM,
            "latency": LATENCY,
            "workers": WORKERS,
            "rounds": rounds,
            **counts,
        },
        "columns": COLUMNS,
        "rows": rows,
        "notes": [
            "goodput: successful calls (b: tokens as the provider counts them) per minute, after its "
            "initially full bucket, over the key's limit; (d) is measured against the whole key, of "
            f"which the workers can have {1 - OTHER_CLIENT_SHARE:.0%}",
            "median of the rounds by goodput (by 429s for (d))",
        ],
    }


def measure(
    redis_url: str, provider: ProviderProcess, workers: Workers, scenario: Scenario, count: int
) -> dict[str, Any]:
    batch_jobs = own_model_jobs(scenario.workload, count)
    outcome = asyncio.run(queue_run(redis_url, provider, workers, batch_jobs, timeout=300))
    tpm = TPM if scenario.workload == "long" else None
    return {
        "jobs": count,
        **rate_figures(
            count, outcome.batch.seconds, outcome.batch.succeeded, outcome.stats, rpm=RPM, tpm=tpm
        ),
        "others_share": asyncio.run(others_share(redis_url)),
    }


async def others_share(redis_url: str) -> float:
    """The share of the key the workers learnt another client takes, at the end of a round (0 where
    there is none: a share learnt there costs goodput)."""
    redis = Redis.from_url(redis_url)
    try:
        return (await RateLimiter(redis).inspect(OWN_MODEL)).others_request_share
    finally:
        await redis.aclose()


def median_row(scenario: Scenario, measured: list[dict[str, Any]]) -> dict[str, Any]:
    key = "rate_limited_share" if scenario.goodput_target is None else "goodput"
    ordered = sorted(measured, key=lambda row: row[key])
    row = {**ordered[len(ordered) // 2], "scenario": scenario.name, "rounds": len(measured)}
    row["goodput_rounds"] = [m["goodput"] for m in measured]
    row["rate_limited_rounds"] = [m["rate_limited_share"] for m in measured]
    row["others_share_rounds"] = [m["others_share"] for m in measured]
    met = row["rate_limited_share"] <= scenario.rate_limited_target and row["failed"] == 0
    target = f"429s ≤ {scenario.rate_limited_target:.1%}, none failed"
    if scenario.goodput_target is not None:
        met = met and row["goodput"] >= scenario.goodput_target
        target = f"goodput ≥ {scenario.goodput_target:g}, " + target
    row["target"] = target
    row["met"] = met
    row["median_goodput"] = statistics.median(row["goodput_rounds"])
    return row
