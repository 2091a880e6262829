"""Benchmark 6, deployments: one model name served by two keys, each with its own limit.

Two simulated providers, each a deployment (``openai/gpt-4o``) at 600 RPM over a 1 s bucket with 0.3 s
latency and its own API key; two worker processes configured with a ``[[model_list]]`` whose keys are
``os.environ/`` references and whose ``model_name`` is an alias, ``evalmodel``, as LiteLLM proxy configs
name their models. 800 jobs name only ``evalmodel``: routed at admission, the deployments should
together run at the sum of their limits. Then the same with one provider down from the start (nothing
listens at its address): the batch should finish at the other's rate with no failed job.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import Batch, Workers, flush, producer_settings, run_batch, warm_up
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

RPM = 600  # each provider's limit
WINDOW = 1.0
LATENCY = 0.3
MODEL_NAME = "evalmodel"  # an alias: a name LiteLLM does not know, served only by the model_list
DEPLOYED_MODEL = "openai/gpt-4o"
KEYS = {"BENCH_EU_KEY": "sk-bench-eu-3c9d1f", "BENCH_US_KEY": "sk-bench-us-8a2e7b"}
GOODPUT_TARGET = 0.95
RATE_LIMITED_TARGET = 0.005
SHARE_TARGET = 0.40
DOWN_TARGET = 0.95  # of the live provider's rate

# The workers' deployments are set this far under each key's limit (the figures in the README were
# measured so).
HEADROOM = 0.02

FULL = {"jobs": 800, "rounds": 3, "down_rounds": 3}
QUICK = {"jobs": 200, "rounds": 1, "down_rounds": 1}

COLUMNS = {
    "scenario": "scenario",
    "jobs": "jobs",
    "wall_seconds": "wall s",
    "goodput": "goodput",
    "wall_goodput": "goodput (wall)",
    "rate_limited_share": "429s / requests",
    "eu_share": "eu share",
    "us_share": "us share",
    "failed": "failed",
    "spent_attempts": "jobs with >1 attempt",
    "target": "target",
    "met": "met",
}


def config_toml(eu_url: str, us_url: str) -> str:
    """The workers' config.toml: two deployments of one alias, 2% under each key's limit."""
    rpm = RPM * (1 - HEADROOM)
    entries = []
    for name, url, key in (("eu", eu_url, "BENCH_EU_KEY"), ("us", us_url, "BENCH_US_KEY")):
        entries.append(
            f'[[model_list]]\nmodel_name = "{MODEL_NAME}"\nmodel_info = {{ id = "{name}" }}\n'
            f'litellm_params = {{ model = "{DEPLOYED_MODEL}", api_base = "{url}", '
            f'api_key = "os.environ/{key}", rpm = {rpm:g} }}\n'
        )
    return "\n".join(entries)


def jobs(count: int) -> list[dict[str, Any]]:
    return [
        {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": f"Question {n}: what is {n} plus {n}?"}],
        }
        for n in range(count)
    ]


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    config = ProviderConfig(rpm=RPM, window_seconds=WINDOW, latency=LATENCY, seed=1)
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch, EmbeddedRedis() as redis:
        workdir = Path(scratch)
        with (
            ProviderProcess(config.model_copy(update={"api_key": KEYS["BENCH_EU_KEY"]})) as eu,
            ProviderProcess(config.model_copy(update={"api_key": KEYS["BENCH_US_KEY"]})) as us,
        ):
            both = [measure(redis.url, workdir, eu, us, sizes["jobs"]) for _ in range(sizes["rounds"])]
            rows.append(median_row("both up", both, sizes["jobs"]))
            down = [measure(redis.url, workdir, eu, None, sizes["jobs"]) for _ in range(sizes["down_rounds"])]
            rows.append(median_row("us down from the start", down, sizes["jobs"]))
    return {
        "title": "6. Deployments: one model name over two keys",
        "description": (
            f"two simulated providers, each {RPM} RPM over a {WINDOW:g} s bucket, {LATENCY:g} s latency; "
            f"{sizes['jobs']} jobs for '{MODEL_NAME}', 2 workers; median of {sizes['rounds']} round(s) "
            f"(down: {sizes['down_rounds']})"
        ),
        "params": {"rpm_each": RPM, "window_seconds": WINDOW, "latency": LATENCY, **sizes},
        "columns": COLUMNS,
        "rows": rows,
        "notes": [
            "goodput = (successes - the providers' initially full buckets) / (summed limit x time from the "
            "first request to the last success), over both providers' counters; with one down, over the "
            "live one's limit",
            f"the workers' deployments are set {HEADROOM:.0%} under each key's limit",
            "jobs with >1 attempt: jobs whose retries were spent (a call to the down provider is rerouted, "
            "not counted)",
        ],
    }


def measure(
    redis_url: str, workdir: Path, eu: ProviderProcess, us: ProviderProcess | None, count: int
) -> dict[str, Any]:
    us_url = us.base_url if us is not None else f"http://127.0.0.1:{closed_port()}/v1"
    config = workdir / "config.toml"
    config.write_text(config_toml(eu.base_url, us_url), encoding="utf-8")
    env = {"REDIS_URL": redis_url, "LLMQUEUE_CONFIG": str(config), "WORKER_POLL_DELAY": "0.01", **KEYS}
    live = [p for p in (eu, us) if p is not None]
    with Workers(env, workdir) as workers:
        workers.scale_to(2)
        batch = asyncio.run(_run(redis_url, workers, live, count))
        stats = [p.stats() for p in live]
    return figures(batch, stats, count, live_providers=len(live))


async def _run(redis_url: str, workers: Workers, live: list[ProviderProcess], count: int) -> Batch:
    settings = producer_settings(redis_url)
    async with Producer(settings) as producer:
        await warm_up(producer, workers, jobs(1)[0])
    flush(redis_url)
    for provider in live:
        provider.control("reset")
    async with Producer(settings) as producer:
        expected = count / (RPM * len(live)) * 60
        return await run_batch(producer, jobs(count), timeout=3 * expected + 120, workers=workers)


def figures(batch: Batch, stats: list[dict[str, Any]], count: int, *, live_providers: int) -> dict[str, Any]:
    """Combined goodput over the providers' counters (their clocks are the same monotonic clock)."""
    arrivals = [a["time"] for s in stats for a in s["arrivals"]]
    requests = sum(int(s["requests"]) for s in stats)
    rate_limited = sum(int(s["rate_limited"]) for s in stats)
    limit = RPM * live_providers
    start = min(t for s in stats for t in s["request_times"])
    span = max(arrivals) - start
    full_buckets = limit * WINDOW / 60
    results = [r for r in batch.results if r is not None]
    by = {name: sum(r.deployment == name for r in results) for name in ("eu", "us")}
    return {
        "jobs": count,
        "wall_seconds": batch.seconds,
        "goodput": (len(arrivals) - full_buckets) / (limit / 60 * span),
        "wall_goodput": batch.succeeded / batch.seconds * 60 / limit,
        "rate_limited_share": rate_limited / requests if requests else 0.0,
        "eu_share": by["eu"] / max(1, len(results)),
        "us_share": by["us"] / max(1, len(results)),
        "failed": count - batch.succeeded,
        "spent_attempts": sum(r.attempts > 1 for r in results),
    }


def median_row(scenario: str, rounds: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """The round with the median goodput, with the check against its scenario's target."""
    ordered = sorted(rounds, key=lambda r: r["goodput"])
    row = {"scenario": scenario, **ordered[len(ordered) // 2]}
    row["rounds"] = [
        {
            k: r[k]
            for k in ("goodput", "rate_limited_share", "eu_share", "us_share", "failed", "spent_attempts")
        }
        for r in rounds
    ]
    row["median_goodput"] = statistics.median(r["goodput"] for r in rounds)
    if scenario == "both up":
        row["target"] = (
            f"goodput ≥ {GOODPUT_TARGET:g} of {2 * RPM} RPM, 429s ≤ {RATE_LIMITED_TARGET:.1%}, "
            f"each ≥ {SHARE_TARGET:.0%}"
        )
        row["met"] = (
            row["goodput"] >= GOODPUT_TARGET
            and row["rate_limited_share"] <= RATE_LIMITED_TARGET
            and min(row["eu_share"], row["us_share"]) >= SHARE_TARGET
            and row["failed"] == 0
        )
    else:
        row["target"] = f"goodput ≥ {DOWN_TARGET:g} of {RPM} RPM, no failed job"
        row["met"] = row["goodput"] >= DOWN_TARGET and row["failed"] == 0
    return row


def closed_port() -> int:
    """A local port nothing listens on: calls to it are refused at once, as to a provider that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
