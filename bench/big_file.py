"""A big batch file through ``llmqueue run`` (issue 29): how soon the first provider request comes, the
run process's peak RSS and what Redis holds per line of the file while the run feeds its window.

The run is a real ``llmqueue run`` process against a private Redis (``--redis-url``, so Redis can be
watched) and the simulated provider, 2 workers, no rate limit; it is watched until ``observe`` seconds
after its first request or until it ends, then interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench.harness import BenchError
from bench.workloads import API_KEY, MODEL
from llmqueue import keys
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

PROMPT_BYTES = 1000

__all__ = ["PROMPT_BYTES", "RUN_RSS_TARGET", "big_file_rows", "kill_and_resume", "run_big_file", "write_file"]


def write_file(path: Path, lines: int) -> int:
    """A JSONL file of ``lines`` chat requests of about ``PROMPT_BYTES`` each; returns its size in bytes."""
    filler = "lorem ipsum dolor sit amet " * (PROMPT_BYTES // 27 + 1)
    with path.open("w", encoding="utf-8") as out:
        for n in range(lines):
            text = f"question {n}: {filler}"[:PROMPT_BYTES]
            # Each line names its model, as users' files do (the workers' configured one).
            line = {"custom_id": f"q{n}", "model": MODEL, "messages": [{"role": "user", "content": text}]}
            out.write(json.dumps(line) + "\n")
    return path.stat().st_size


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


RUN_RSS_TARGET = 300 * 2**20  # bytes, issue 29

FIRST_REQUEST_PATIENCE = 120.0
"""Seconds the bench waits for a run's first provider request before it gives up."""
STALL_CHECK_EVERY = 300.0
"""Seconds between two looks at the provider's answers once calls began; none new in between: stalled."""


def _cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far, in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_env(provider: ProviderProcess, scratch: str) -> dict[str, str]:
    """The run's environment: the provider's settings, and a response cache of its own in ``scratch``
    (the default cache is on, as for users, but not the user's: a rerun would be answered from it)."""
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith(("LLM_", "WORKER_", "BATCH_", "CACHE_", "REDIS_", "LLMQUEUE_"))
        },
        "LLM_MODEL": MODEL,
        "LLM_BASE_URL": provider.base_url,
        "LLM_API_KEY": API_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "XDG_CACHE_HOME": scratch,
    }


def run_big_file(lines: int, observe: float, *, skip_invalid: bool = False) -> dict[str, Any]:
    """Run a file of ``lines`` lines and watch it for ``observe`` seconds after its first request (or
    until it ends); ``skip_invalid`` runs it with ``--skip-invalid`` (no up-front check of every line)."""
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-big-") as scratch:
        source = Path(scratch) / "big.jsonl"
        size = write_file(source, lines)
        with EmbeddedRedis() as server, ProviderProcess(ProviderConfig(latency=0.01)) as provider:
            client = redis_sync.Redis.from_url(server.url)
            baseline = int(client.info("memory")["used_memory"])  # type: ignore[index]
            env = _run_env(provider, scratch)
            output = Path(scratch) / "out.jsonl"
            command = [sys.executable, "-m", "llmqueue", "run", str(source), "-o", str(output)]
            command += ["--redis-url", server.url, "--batch", "big"]
            command += ["--skip-invalid"] if skip_invalid else []
            # A file, not a pipe: a whole run's progress would fill a pipe nobody reads until the end.
            errors = (Path(scratch) / "run.err").open("w+b")
            began = time.monotonic()
            try:
                process = subprocess.Popen(  # in scratch: no ./config.toml of the caller's applies
                    command, env=env, cwd=scratch, stdout=subprocess.DEVNULL, stderr=errors
                )
            except BaseException:
                errors.close()
                raise
            first_request: float | None = None
            first_queued: float | None = None
            peak_redis = peak_rss = 0
            cpu = cpu_at_first = 0.0
            answered_at_first = 0
            progress_seen, progress_at, stalled = -1, time.monotonic(), False
            try:
                while process.poll() is None:
                    since = time.monotonic() - began
                    if since > (observe + first_request if first_request else FIRST_REQUEST_PATIENCE):
                        break
                    if first_request is not None and time.monotonic() - progress_at > STALL_CHECK_EVERY:
                        answered_now = int(provider.stats(counts_only=True)["succeeded"])
                        if answered_now == progress_seen:  # nothing answered, or the run not ending
                            stalled = True
                            break
                        progress_seen, progress_at = answered_now, time.monotonic()
                    if first_queued is None and client.zcard(keys.batch_jobs("big")):
                        first_queued = time.monotonic() - began
                    if first_request is None and provider.stats(counts_only=True)["requests"] > 0:
                        first_request = time.monotonic() - began
                        cpu_at_first = _cpu_seconds(process.pid)
                        answered_at_first = int(provider.stats(counts_only=True)["succeeded"])
                    used = int(client.info("memory")["used_memory"])  # type: ignore[index]
                    peak_redis = max(peak_redis, used - baseline)
                    peak_rss = max(peak_rss, _peak_rss(process.pid))
                    cpu = _cpu_seconds(process.pid) or cpu
                    time.sleep(0.05)
                finished = process.poll() is not None
                elapsed = time.monotonic() - began
                # Redis's own peak (exact; a private server): short spikes between two samples count too.
                peak = int(client.info("memory")["used_memory_peak"])  # type: ignore[index]
                peak_redis = max(peak_redis, peak - baseline)
                if not finished:
                    process.send_signal(signal.SIGINT)
                process.wait(timeout=120)
            finally:
                if process.poll() is None:
                    process.kill()
                errors.seek(0)
                stderr = errors.read()
                errors.close()
            answered = int(provider.stats(counts_only=True)["succeeded"])
            requests = int(provider.stats(counts_only=True)["requests"])
            if stalled:
                what = "the run did not end" if answered >= lines else "no line answered"
                raise BenchError(f"{what} in {STALL_CHECK_EVERY:.0f} s: {stderr.decode()[-2000:]}")
            if finished and process.returncode != 0:
                raise BenchError(f"llmqueue run exited {process.returncode}: {stderr.decode()[-2000:]}")
            in_order = None
            if finished:
                in_order = _each_once_in_order(output, lines) and answered == requests == lines
    if first_request is None:
        raise BenchError(f"no provider request within {FIRST_REQUEST_PATIENCE:.0f} s")
    return {
        "lines": lines,
        "file_bytes": size,
        "observed_seconds": elapsed,
        "finished": finished,
        "answered": answered,
        "provider_requests": requests,
        "lines_per_second": answered / elapsed,
        "first_request_seconds": first_request,
        "first_queued_seconds": first_queued,
        "peak_rss_bytes": peak_rss,
        "run_cpu_seconds": cpu,
        "run_cpu_before_first_request_seconds": cpu_at_first,
        # Feeding the window and writing the output, per line answered after the first request.
        "feed_cpu_per_line_us": (cpu - cpu_at_first) / max(answered - answered_at_first, 1) * 1e6,
        "peak_redis_bytes": peak_redis,
        "redis_bytes_per_line": peak_redis / lines,
        "redis_budget_bytes": 0.35 * size + 50 * 2**20,
        "each_once_in_order": in_order,
    }


def _each_once_in_order(output: Path, lines: int) -> bool:
    """Whether ``output`` holds the answers of lines ``q0`` … ``q<lines-1>``, each once, in that order."""
    count = 0
    with output.open(encoding="utf-8") as out:
        for n, line in enumerate(out):
            if json.loads(line)["custom_id"] != f"q{n}":
                return False
            count = n + 1
    return count == lines


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_and_resume(lines: int, kill_after: int) -> dict[str, Any]:
    """Run a file of ``lines`` lines, kill the run (SIGKILL) once the provider has answered
    ``kill_after`` lines, then ``llmqueue run --resume`` it to the end: what the provider was sent in
    all, and whether the output holds every line once, in input order."""
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-kill-") as scratch:
        source = Path(scratch) / "big.jsonl"
        write_file(source, lines)
        output = Path(scratch) / "out.jsonl"
        with EmbeddedRedis() as server, ProviderProcess(ProviderConfig(latency=0.01)) as provider:
            env = _run_env(provider, scratch)
            client = redis_sync.Redis.from_url(server.url)
            base = [sys.executable, "-m", "llmqueue", "run"]
            where = ["-o", str(output), "--redis-url", server.url]
            errors = (Path(scratch) / "run.err").open("w+b")  # a file: a pipe unread until the kill fills
            process = subprocess.Popen(
                [*base, str(source), *where, "--batch", "killed"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            try:
                deadline = time.monotonic() + FIRST_REQUEST_PATIENCE + 600
                while int(provider.stats(counts_only=True)["succeeded"]) < kill_after:
                    if process.poll() is not None:
                        errors.seek(0)
                        raise BenchError(f"the run ended before its kill: {errors.read()[-2000:]!r}")
                    if time.monotonic() > deadline:
                        raise BenchError(f"fewer than {kill_after} lines answered within the patience")
                    time.sleep(0.01)
                started = _children_of(process.pid)
                at_kill = provider.stats(counts_only=True)
                process.send_signal(signal.SIGKILL)
                claimed = sum(1 for _ in client.scan_iter(match=keys.arq_in_progress("*"), count=1000))
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                errors.close()
            deadline = time.monotonic() + 60  # the run's reaper stops the workers it started
            while [pid for pid in started if _alive(pid)] and time.monotonic() < deadline:
                time.sleep(0.1)
            after_kill = provider.stats(counts_only=True)
            partial = output.with_name(output.name + ".partial")
            written_before = len(partial.read_bytes().splitlines()) if partial.exists() else 0
            began = time.monotonic()
            resumed = subprocess.run(
                [*base, "--resume", "killed", str(source), *where],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=3600,
                check=False,
            )
            resume_seconds = time.monotonic() - began
            if resumed.returncode != 0:
                raise BenchError(
                    f"run --resume exited {resumed.returncode}: {resumed.stderr.decode()[-2000:]}"
                )
            stats = provider.stats(counts_only=True)
        with output.open(encoding="utf-8") as out:
            seen = [json.loads(line)["custom_id"] for line in out]
    return {
        "lines": lines,
        "killed_after_answers": int(at_kill["succeeded"]),
        "in_flight_at_kill": int(at_kill["requests"]) - int(at_kill["succeeded"]),
        "claimed_at_kill": claimed,
        "answered_before_resume": int(after_kill["succeeded"]),
        "written_before_resume": written_before,
        "resume_seconds": resume_seconds,
        "provider_requests": int(stats["requests"]),
        "sent_twice": int(stats["requests"]) - lines,
        "each_once_in_order": seen == [f"q{n}" for n in range(lines)],
    }


def big_file_rows(
    big: dict[str, Any], how: str, *, first_request_target: float, observed: float
) -> list[dict[str, Any]]:
    """The benchmark rows of a ``run_big_file`` result, against issue 29's targets."""
    budget = big["redis_budget_bytes"]
    rows: list[dict[str, Any]] = [
        {
            "figure": f"{how} of {big['lines']:,} lines: first provider request after start",
            "value": big["first_request_seconds"],
            "unit": "s",
            "target": f"≤ {first_request_target:.0f} s",
            "met": big["first_request_seconds"] <= first_request_target,
        },
        {
            "figure": "  first job queued after start (the rest is the workers' start-up)",
            "value": big["first_queued_seconds"],
            "unit": "s",
        },
        {
            "figure": "  peak RSS of the run process",
            "value": big["peak_rss_bytes"] / 2**20,
            "unit": "MB",
            "target": f"≤ {RUN_RSS_TARGET / 2**20:.0f} MB",
            "met": big["peak_rss_bytes"] <= RUN_RSS_TARGET,
        },
        {
            "figure": "  peak Redis memory over the whole run"
            if big["finished"]
            else f"  peak Redis memory in its first {observed:.0f} s of calls",
            "value": big["peak_redis_bytes"] / 2**20,
            "unit": "MB",
            "target": f"≤ {budget / 2**20:.0f} MB (0.35 x file + 50 MB)",
            "met": big["peak_redis_bytes"] <= budget,
        },
        {
            "figure": "  Redis memory per line of the file",
            "value": big["redis_bytes_per_line"],
            "unit": "bytes",
        },
        {"figure": "  lines answered per second", "value": big["lines_per_second"], "unit": "lines/s"},
        {
            "figure": "  run process CPU before the first request (checking the file)",
            "value": big["run_cpu_before_first_request_seconds"],
            "unit": "s",
        },
        {
            "figure": "  run CPU per line answered after it (feeding, writing, a big file's check)",
            "value": big["feed_cpu_per_line_us"],
            "unit": "µs",
        },
    ]
    if big["finished"]:
        rows.append(
            {
                "figure": "  every line answered once, output in input order",
                "value": "yes" if big["each_once_in_order"] else "NO",
                "unit": "",
                "target": "yes",
                "met": bool(big["each_once_in_order"]),
            }
        )
    return rows
