"""Benchmark 7, start-up: ``llmqueue run`` of a 50-line file, from the command's start to the provider's
first request, and to the end, with 1, 2 and 4 workers.

The provider is the demo's (``--simulate-provider``: 0.2 s ± 50% latency, a key 2% above ``--rpm 600``)
started beforehand in its own process, so its request times can be read; the run starts its own Redis
and workers as it does for a user. The provider and this process share one monotonic clock.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import BenchError, child_env
from bench.workloads import chat_job
from llmqueue.simulator.demo import demo_provider

LINES = 50
RPM = 600
WORKER_COUNTS = (1, 2, 4)
FIRST_REQUEST_TARGET = 3.0
TOTAL_TARGET = 5.0
FULL_ROUNDS = 3
QUICK_ROUNDS = 1

COLUMNS = {
    "figure": "figure",
    "value": "value",
    "unit": "unit",
    "target": "target",
    "met": "met",
}


def run(quick: bool) -> dict[str, Any]:
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch:
        workdir = Path(scratch)
        source = workdir / "prompts.jsonl"
        source.write_text(
            "".join(json.dumps({"custom_id": f"p-{n}", **chat_job(n)}) + "\n" for n in range(LINES)),
            encoding="utf-8",
        )
        for workers in WORKER_COUNTS:
            firsts, totals = [], []
            for round_ in range(rounds):
                first, total = _one_run(workdir, source, workers, round_)
                firsts.append(first)
                totals.append(total)
            first, total = statistics.median(firsts), statistics.median(totals)
            figures[str(workers)] = {"first_request": firsts, "total": totals}
            rows.append(
                {
                    "figure": f"--workers {workers}: first provider request after start",
                    "value": first,
                    "unit": "s",
                    "target": f"≤ {FIRST_REQUEST_TARGET:g} s",
                    "met": first <= FIRST_REQUEST_TARGET,
                }
            )
            rows.append(
                {
                    "figure": f"--workers {workers}: whole run ({LINES} lines)",
                    "value": total,
                    "unit": "s",
                    "target": f"≤ {TOTAL_TARGET:g} s",
                    "met": total <= TOTAL_TARGET,
                }
            )
    return {
        "title": "7. Start-up of llmqueue run",
        "description": (
            f"llmqueue run of {LINES} lines with --rpm {RPM}, the demo's simulated provider; "
            f"median of {rounds} run(s) each"
        ),
        "params": {"lines": LINES, "rpm": RPM, "rounds": rounds},
        "columns": COLUMNS,
        "rows": rows,
        "runs": figures,
        "notes": ["each run starts its own Redis and workers, as `llmqueue run` does for a user"],
    }


def _one_run(workdir: Path, source: Path, workers: int, round_: int) -> tuple[float, float]:
    output = workdir / f"out-{workers}-{round_}.jsonl"
    with demo_provider(rpm=RPM, tpm=None, model=None) as env:
        command = [sys.executable, "-m", "llmqueue", "run", str(source), "-o", str(output)]
        command += ["--workers", str(workers), "--rpm", str(RPM), "--batch", f"startup-{workers}-{round_}"]
        started = time.monotonic()
        process = subprocess.run(command, env=child_env(**env), capture_output=True, text=True, timeout=300)
        total = time.monotonic() - started
        if process.returncode != 0:
            raise BenchError(f"llmqueue run exited {process.returncode}: {process.stderr[-2000:]}")
        base = env["LLM_BASE_URL"].removesuffix("/v1")
        stats = _stats(base)
    times = stats["request_times"]
    if len(times) < LINES:
        raise BenchError(f"the provider saw {len(times)} requests for {LINES} lines")
    return min(times) - started, total


def _stats(base: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(base + "/stats", timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data
