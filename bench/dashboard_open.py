"""Benchmark: what an open dashboard page costs a run.

The queue-overhead and rate-limit measurements (``bench.overhead``: one worker's jobs/s ÷ a bare
``litellm.acompletion`` loop's; ``bench.ratelimit``: goodput and 429s of 4 workers under a 3,000 RPM
provider, chat jobs) run in rounds without and with ``llmqueue dashboard`` on the same Redis and a page
open on it (``bench.page_client``: the event stream held, every snapshot decoded, whatever the page's
script would fetch fetched). The dashboard and the page are started for each with-page round and
stopped after it. Rounds come in pairs, one of each, in alternating order (without-with, with-without,
...), so that noise from other processes and a drift over the run hit both sides alike; each figure is
the median of its rounds, and each change the median of the pairs' own ratios (differences for 429s).

The benchmarks' jobs are plain submits, not a batch, so the page follows limits, workers and spend and
has no batch card to draw; what a reading with batches costs is in the dashboard guide.

Targets, and why these:

- queue overhead with the page ≥ 0.95 x without: the overhead benchmark's own rounds differ by a few
  percent on a shared 2-core machine, so a median of paired rounds resolves a 5% cost; a page costing
  that much CPU would be a real defect (a reading once a second should cost well under 1% of a core).
- rate-limit goodput with the page ≥ 0.98 x without: goodput is set by the limiter, not by CPU (its
  rounds agree within 0.1%), so 2% lost would be the page disturbing the limiter or the workers.
- 429s with the page at most 0.5 points (per 100 requests) above without: half of the rate-limit
  benchmark's own allowance (≤ 1%).

The dashboard process's CPU during the with-page rounds is reported (share of one core, ms per
snapshot sent), with the page client's (what a browser tab would spend) and Redis's.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import overhead, ratelimit
from bench.clients import Clients
from bench.harness import (
    BenchError,
    MachineCpu,
    Workers,
    child_pid,
    cpu_between,
    cpu_snapshot,
    flush,
    worker_env,
)
from bench.page_client import OpenDashboard
from bench.workloads import jobs
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

OVERHEAD_TARGET = 0.95
GOODPUT_TARGET = 0.98
RATE_LIMITED_POINTS = 0.5


@dataclass(frozen=True)
class Sizes:
    overhead_jobs: int
    chat_jobs: int
    pairs: int


FULL = Sizes(overhead_jobs=3000, chat_jobs=2000, pairs=3)
QUICK = Sizes(overhead_jobs=300, chat_jobs=200, pairs=1)

COLUMNS = {
    "figure": "figure",
    "without": "without page",
    "with": "with page",
    "ratio": "with ÷ without",
    "difference": "with - without",
    "target": "target",
    "met": "met",
}

Round = dict[str, Any]


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch, EmbeddedRedis() as redis:
        workdir = Path(scratch)
        overhead_rounds = _overhead_rounds(redis.url, workdir, sizes)
        ratelimit_rounds = _ratelimit_rounds(redis.url, workdir, sizes)
    return result(sizes, overhead_rounds, ratelimit_rounds)


def result(sizes: Sizes, overhead_rounds: list[Round], ratelimit_rounds: list[Round]) -> dict[str, Any]:
    """The benchmark's rows, targets and notes from its rounds."""
    rounds = overhead_rounds + ratelimit_rounds
    for figures in rounds:
        figures["machine_busy_points"] = 100 * figures["machine_busy"]
    with_page = [r for r in rounds if r["page"]]
    dashboard_cpu = sum(r["dashboard_cpu_seconds"] for r in with_page)
    page_cpu = sum(r["page_cpu_seconds"] for r in with_page)
    page_seconds = sum(r["round_seconds"] for r in with_page)
    snapshots = sum(r["snapshots"] for r in with_page)
    overhead_ratio = _compared(overhead_rounds, "ratio")
    goodput = _compared(ratelimit_rounds, "goodput")
    rate_limited = _compared(ratelimit_rounds, "rate_limited_points", difference=True)
    rows = [
        {
            "figure": f"queue overhead: 1 worker ÷ bare LiteLLM loop, {overhead.CONCURRENCY} tasks",
            **overhead_ratio,
            "target": f"with ≥ {OVERHEAD_TARGET:g} x without",
            "met": overhead_ratio["ratio"] >= OVERHEAD_TARGET,
        },
        {"figure": "queue jobs/s, 1 worker", **_compared(overhead_rounds, "queue_jobs_per_second")},
        {"figure": "worker CPU ms/job", **_compared(overhead_rounds, "worker_cpu_ms")},
        {"figure": "Redis CPU ms/job (overhead rounds)", **_compared(overhead_rounds, "redis_cpu_ms")},
        {
            "figure": f"rate-limit goodput, chat, {ratelimit.TARGET_WORKERS} workers",
            **goodput,
            "target": f"with ≥ {GOODPUT_TARGET:g} x without",
            "met": goodput["ratio"] >= GOODPUT_TARGET,
        },
        {
            "figure": "rate-limit 429s per 100 requests",
            **rate_limited,
            "target": f"with ≤ without + {RATE_LIMITED_POINTS:g}",
            "met": rate_limited["difference"] <= RATE_LIMITED_POINTS,
        },
        {"figure": "machine CPU busy, % (every process)", **_compared(rounds, "machine_busy_points")},
        {"figure": "dashboard process CPU, % of one core", "with": 100 * dashboard_cpu / page_seconds},
        {"figure": "dashboard process CPU ms per snapshot sent", "with": 1000 * dashboard_cpu / snapshots},
        {"figure": "page client CPU, % of one core", "with": 100 * page_cpu / page_seconds},
    ]
    return {
        "title": "Dashboard open: overhead and rate limits without and with a page",
        "description": (
            f"{sizes.pairs} pair(s) of rounds per benchmark, alternating order; overhead: "
            f"{sizes.overhead_jobs} chat jobs, zero-latency provider; rate limits: {sizes.chat_jobs} chat "
            f"jobs, {ratelimit.RPM:,} RPM over a {ratelimit.WINDOW:g} s bucket; figures are medians of "
            "rounds, changes medians of the pairs' ratios (differences for 429s)"
        ),
        "params": {**sizes.__dict__},
        "columns": COLUMNS,
        "rows": rows,
        "rounds": {"overhead": overhead_rounds, "ratelimit": ratelimit_rounds},
        "dashboard_cpu_seconds": dashboard_cpu,
        "page_cpu_seconds": page_cpu,
        "with_page_seconds": page_seconds,
        "snapshots": snapshots,
        "notes": [
            f"with the page: {snapshots} snapshots in {page_seconds:.0f} s of with-page rounds "
            f"({snapshots / page_seconds:.2f} a second), the dashboard process used {dashboard_cpu:.2f} s "
            f"of CPU, the page client {page_cpu:.2f} s",
            "the jobs are plain submits (no batch): the page followed limits, workers and spend",
            "the dashboard and the page are started before each with-page round and stopped after it; "
            "their start-up is not in the round",
            "machine CPU busy: the share of both cores busy during the rounds, other tenants included; "
            "where it differs between the sides, so do the throughput figures, whatever the page costs",
        ],
    }


def _overhead_rounds(redis_url: str, workdir: Path, sizes: Sizes) -> list[Round]:
    """``bench.overhead``'s bare-loop and queue runs, one of each per round."""
    count = sizes.overhead_jobs
    batch_jobs = jobs("chat", count)
    with ProviderProcess(ProviderConfig()) as provider:
        provider_pid = child_pid("simulate-provider")
        if provider_pid is None:
            raise BenchError("cannot find the provider process")
        env = worker_env(redis_url, provider.base_url, worker_max_jobs=overhead.CONCURRENCY)
        with (
            Workers(env, workdir) as workers,
            Clients(
                "litellm", provider.base_url, count=count, concurrency=overhead.CONCURRENCY, workdir=workdir
            ) as bare,
        ):
            workers.scale_to(1)
            asyncio.run(overhead.warm_up_queue(redis_url, workers, batch_jobs[0]))
            bare.run(warm_up=True)

            def measure() -> Round:
                loop = bare.run()
                if loop.failed:
                    raise BenchError(f"bare LiteLLM loop: {loop.failed} calls failed: {loop.errors}")
                flush(redis_url)
                seconds = asyncio.run(overhead.queue_batch(redis_url, workers, batch_jobs))
                bare_rate, queue_rate = count / loop.seconds, count / seconds
                return {
                    "bare_jobs_per_second": bare_rate,
                    "queue_jobs_per_second": queue_rate,
                    "ratio": queue_rate / bare_rate,
                }

            groups = {"worker": workers.pids, "client": bare.pids, "provider": [provider_pid]}
            rounds = [_round(page, redis_url, workdir, groups, measure) for page in _pages(sizes.pairs)]
    for figures in rounds:
        figures["worker_cpu_ms"] = figures["cpu"]["worker"] / count * 1000
        figures["redis_cpu_ms"] = figures["cpu"]["redis"] / count * 1000
    return rounds


def _ratelimit_rounds(redis_url: str, workdir: Path, sizes: Sizes) -> list[Round]:
    """``bench.ratelimit``'s chat measurement with its target's number of workers, once per round."""
    with (
        ProviderProcess(ratelimit.chat_provider()) as provider,
        Workers(worker_env(redis_url, provider.base_url, llm_rpm=ratelimit.RPM), workdir) as workers,
    ):
        workers.scale_to(ratelimit.TARGET_WORKERS)

        def measure() -> Round:
            row = ratelimit.measure(redis_url, provider, workers, "chat", sizes.chat_jobs)
            kept = ("goodput", "wall_goodput", "wall_seconds", "requests", "rate_limited", "failed")
            figures = {key: row[key] for key in kept}
            figures["rate_limited_points"] = 100 * row["rate_limited_share"]
            return figures

        groups = {"worker": workers.pids}
        return [_round(page, redis_url, workdir, groups, measure) for page in _pages(sizes.pairs)]


def _pages(pairs: int) -> list[bool]:
    """Whether each round has the page open: pairs of one without and one with, the order alternating
    from pair to pair (without-with, with-without, ...), so that a drift over the run cancels out."""
    return [bool(pair % 2) != bool(second) for pair in range(pairs) for second in (0, 1)]


@contextlib.contextmanager
def _dashboard(page: bool, redis_url: str, workdir: Path) -> Iterator[OpenDashboard | None]:
    if not page:
        yield None
        return
    with OpenDashboard(redis_url, workdir) as dashboard:
        yield dashboard


def _round(
    page: bool,
    redis_url: str,
    workdir: Path,
    groups: Mapping[str, Sequence[int]],
    measure: Callable[[], Round],
) -> Round:
    """``measure()``'s figures, with the page open if ``page``, and the CPU each process group used."""
    with _dashboard(page, redis_url, workdir) as dashboard:
        processes = {**groups, "dashboard": [], "page": [], **(dashboard.pids if dashboard else {})}
        before, machine = cpu_snapshot(processes, redis_url), MachineCpu()
        started = time.monotonic()
        figures = measure()
        seconds = time.monotonic() - started
        cpu = cpu_between(before, cpu_snapshot(processes, redis_url))
        busy = machine.busy()
    figures.update(
        page=page,
        machine_busy=busy,
        round_seconds=seconds,
        cpu=cpu,
        dashboard_cpu_seconds=cpu["dashboard"],
        page_cpu_seconds=cpu["page"],
    )
    if dashboard is not None:
        figures["snapshots"] = dashboard.counts.snapshots
        if not dashboard.counts.snapshots:
            raise BenchError("the page received no snapshot: the round did not have a page open")
    return figures


def _compared(rounds: list[Round], key: str, *, difference: bool = False) -> dict[str, float]:
    """The median of ``key`` without and with the page, and the median over pairs of with ÷ without
    (with - without if ``difference``)."""
    without = [r[key] for r in rounds if not r["page"]]
    with_page = [r[key] for r in rounds if r["page"]]
    pairs = zip(without, with_page, strict=True)
    change = "difference" if difference else "ratio"
    changes = [w - o for o, w in pairs] if difference else [w / o for o, w in pairs]
    return {
        "without": statistics.median(without),
        "with": statistics.median(with_page),
        change: statistics.median(changes),
    }
