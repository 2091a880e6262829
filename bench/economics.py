"""Benchmark 6, economics: a batch run again is answered by the response cache, and a dry run is quick.

``llmqueue run`` is started as users start it (its worker processes, a Redis) on a file of 1,000 lines
against the simulated provider, once to fill a fresh cache, then again (rounds), then once with one
prompt changed. The Redis is one the benchmark starts (``--redis-url``, emptied before each run) so it
can see the workers register: a run's time after start-up runs from the moment its batch is queued (and
its first worker is up, when lines were queued for workers) to the process's exit, results file written.
(A worker's start-up, mostly importing LiteLLM, takes seconds on a quiet machine and much longer on a
loaded one.) Lines the cache holds are answered as the run submits them, so a fully cached rerun needs
no worker: its whole command is timed too. The dry run is timed whole, Python's start and LiteLLM's
import included, on 300 lines.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.harness import child_env
from bench.workloads import API_KEY, MODEL
from llmqueue import keys
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

FULL_LINES, QUICK_LINES = 1000, 200
FULL_ROUNDS, QUICK_ROUNDS = 3, 1
DRY_RUN_LINES = 300
TARGET_SECONDS = 3.0

COLUMNS = {
    "figure": "figure",
    "requests": "provider requests",
    "cached": "lines from the cache",
    "seconds": "seconds",
    "target": "target",
    "met": "met",
}


def run(quick: bool) -> dict[str, Any]:
    lines = QUICK_LINES if quick else FULL_LINES
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-economics-") as scratch:
        root = Path(scratch)
        questions = [f"Question {n}: what is {n} times {n + 1}?" for n in range(lines)]
        source = _write(root / "eval.jsonl", questions, MODEL)
        changed = questions.copy()
        changed[lines // 2] = "Question: what is the capital of Peru?"
        edited = _write(root / "edited.jsonl", changed, MODEL)
        env = child_env(XDG_CACHE_HOME=str(root / "xdg"), COLUMNS="200")
        rows = []
        with ProviderProcess(ProviderConfig(latency=0.05)) as provider, EmbeddedRedis() as redis:
            env |= {"LLM_MODEL": MODEL, "LLM_BASE_URL": provider.base_url, "LLM_API_KEY": API_KEY}
            env["REDIS_URL"] = redis.url
            first = _timed_run(source, root, env, provider)
            rows.append(_row(f"first run, {lines} lines (fills the cache)", first, target=None))
            repeats = [_timed_run(source, root, env, provider) for _ in range(rounds)]
            median = statistics.median(r["seconds"] for r in repeats)
            rows.append(
                {
                    **_row(f"same file again (median of {rounds})", repeats[0], target=None),
                    "requests": max(r["requests"] for r in repeats),
                    "seconds": median,
                    "target": f"0 requests, < {TARGET_SECONDS:g} s after start-up",
                    "met": all(r["requests"] == 0 for r in repeats) and median < TARGET_SECONDS,
                }
            )
            rows.append(
                {
                    "figure": f"same file again, the whole command (median of {rounds})",
                    "seconds": statistics.median(r["whole"] for r in repeats),
                }
            )
            one = _timed_run(edited, root, env, provider)
            rows.append(
                {
                    **_row("one prompt changed", one, target=None),
                    "target": "exactly 1 request",
                    "met": one["requests"] == 1,
                }
            )
        dry_questions = [f"Question {n}: what is {n} times {n + 1}?" for n in range(DRY_RUN_LINES)]
        dry_source = _write(root / "dry.jsonl", dry_questions, "gpt-4o-mini")
        dry = [_timed_dry_run(dry_source, root, env) for _ in range(rounds)]
        dry_median = statistics.median(dry)
        rows.append(
            {
                "figure": f"dry run, {DRY_RUN_LINES} lines, whole command (median of {rounds})",
                "seconds": dry_median,
                "target": f"< {TARGET_SECONDS:g} s",
                "met": dry_median < TARGET_SECONDS,
            }
        )
    return {
        "title": "6. Economics: response cache and dry run",
        "description": f"llmqueue run, 2 workers, simulated provider (50 ms), {lines} lines",
        "params": {"lines": lines, "rounds": rounds, "dry_run_lines": DRY_RUN_LINES},
        "columns": COLUMNS,
        "rows": rows,
        "samples": {
            "repeat_seconds": [r["seconds"] for r in repeats],
            "repeat_whole_seconds": [r["whole"] for r in repeats],
            "dry_run_seconds": dry,
        },
        "notes": [
            "seconds for runs: from the batch being queued (and the first worker up, when lines were "
            "queued for workers) to the process's exit, writing the results file included",
            "seconds for the dry run: the whole command, Python start-up and LiteLLM's import included",
        ],
    }


def _write(path: Path, questions: list[str], model: str) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for n, question in enumerate(questions):
            line = {
                "custom_id": f"q-{n:05d}",
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 20,
            }
            out.write(json.dumps(line) + "\n")
    return path


def _row(figure: str, measured: dict[str, Any], target: str | None) -> dict[str, Any]:
    return {
        "figure": figure,
        "requests": measured["requests"],
        "cached": measured["cached"],
        "seconds": measured["seconds"],
        "target": target,
    }


def _timed_run(source: Path, root: Path, env: dict[str, str], provider: ProviderProcess) -> dict[str, Any]:
    before = provider.stats()["requests"]
    output = root / "out.jsonl"
    client = Redis.from_url(env["REDIS_URL"])
    client.flushdb()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmqueue", "run", str(source), "-o", str(output), "--workers", "2"],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    queued_at: list[float] = []
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "job(s) queued" in line and not queued_at:
                queued_at.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    workers_up = None
    while process.poll() is None:
        if workers_up is None and client.keys(keys.WORKER_PATTERN):  # the first worker (others join later)
            workers_up = time.monotonic()
        time.sleep(0.01)
    ended = time.monotonic()
    code = process.returncode
    reader.join(timeout=10)
    client.close()
    if code != 0 or not queued_at:
        raise RuntimeError(f"llmqueue run exited {code}:\n{''.join(lines)[-3000:]}")
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    # A run whose lines the cache answers as they are submitted queues nothing and needs no worker.
    up = queued_at[0] if workers_up is None else max(queued_at[0], workers_up)
    return {
        "seconds": ended - up,
        "whole": ended - started,
        "requests": provider.stats()["requests"] - before,
        "cached": sum(1 for record in records if record["llmqueue"]["cached"]),
    }


def _timed_dry_run(source: Path, root: Path, env: dict[str, str]) -> float:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "llmqueue", "run", str(source), "--dry-run"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - began
    if done.returncode != 0 or f"{DRY_RUN_LINES} line(s)" not in done.stdout:
        raise RuntimeError(f"dry run failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed
