"""What the benchmarks share: child processes, worker processes, batches of jobs, CPU clocks.

Every process the suite needs is started here and stopped by it: workers run as ``python -m llmqueue
worker`` (the command users run) with settings from the environment, in a scratch directory so no
``config.toml`` is picked up, and log to files there instead of pipes nobody reads. CPU figures come
from ``/proc``, so the suite runs on Linux.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bench.workloads import API_KEY, MODEL
from llmqueue.models import JobResult
from llmqueue.ops.processes import start_worker, stop_processes
from llmqueue.producer import Producer
from llmqueue.settings import Settings, WorkerConfig
from llmqueue.simulator.process import ProviderProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run as planned (a process died, results did not arrive)."""


def child_env(**overrides: str) -> dict[str, str]:
    """The environment of a process the suite starts: this one's, minus llmqueue settings, plus the
    repository on ``PYTHONPATH`` and LiteLLM's bundled price map."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "WORKER_", "LLMQUEUE_"))}
    path = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **overrides}


def worker_env(redis_url: str, base_url: str, **settings: float | str) -> dict[str, str]:
    """Worker settings as environment variables: the simulated model, plus e.g. ``llm_rpm=3000``."""
    env = {"REDIS_URL": redis_url, "LLM_MODEL": MODEL, "LLM_BASE_URL": base_url, "LLM_API_KEY": API_KEY}
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env


def producer_settings(redis_url: str, queue_name: str | None = None) -> Settings:
    """Settings for the measuring process's producer (only the Redis URL and queue matter to it)."""
    worker = WorkerConfig(queue_name=queue_name) if queue_name else WorkerConfig()
    return Settings(redis_url=redis_url, worker=worker)


class Workers:
    """Worker processes sharing one environment; ``scale_to`` adds more, ``stop`` ends them all.

    ``command`` replaces ``python -m llmqueue worker`` (the profiling wrapper uses it).
    """

    def __init__(self, env: dict[str, str], workdir: Path, command: Sequence[str] | None = None) -> None:
        self.env = {**env, "PYTHONPATH": child_env()["PYTHONPATH"]}
        self.workdir = workdir
        self.command = list(command) if command else None
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def scale_to(self, count: int) -> None:
        """Start workers until ``count`` run."""
        while len(self.processes) < count:
            log_path = self.workdir / f"worker-{time.monotonic_ns()}.log"
            with log_path.open("wb") as log:
                process = start_worker(self.env, stdout=log, cwd=self.workdir, command=self.command)
            self._logs[process.pid] = log_path
            self.processes.append(process)

    def check_alive(self) -> None:
        """Raise BenchError with the end of its log if a worker has exited."""
        for process in self.processes:
            if process.poll() is not None:
                tail = self._logs[process.pid].read_text(errors="replace")[-3000:]
                raise BenchError(f"worker {process.pid} exited with {process.returncode}:\n{tail}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the workers have used so far."""
        return sum(process_cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        """SIGTERM every worker (arq finishes in-flight jobs), then SIGKILL those still there after 15 s."""
        stop_processes(self.processes, timeout=15)
        self.processes.clear()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def child_pid(fragment: str) -> int | None:
    """The pid of this process's child whose command line contains ``fragment``, if there is one."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat[1] == me and fragment in cmdline:
            return int(entry.name)
    return None


def redis_cpu_seconds(url: str) -> float:
    """CPU seconds the Redis server has used (``INFO cpu``)."""
    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_snapshot(processes: Mapping[str, Sequence[int]], redis_url: str) -> dict[str, float]:
    """CPU seconds used so far by each named group of processes, by Redis (``redis``) and by this
    process (``bench``); subtract two snapshots for what happened in between."""
    snapshot = {name: sum(process_cpu_seconds(pid) for pid in pids) for name, pids in processes.items()}
    snapshot["redis"] = redis_cpu_seconds(redis_url)
    snapshot["bench"] = time.process_time()
    return snapshot


def cpu_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def flush(url: str) -> None:
    """Empty the Redis database: queued jobs, results, limiter buckets."""
    with redis.Redis.from_url(url) as client:
        client.flushdb()


@dataclass
class Batch:
    """A batch of jobs that went through the queue: ``seconds`` from the first submit to the last result."""

    seconds: float
    enqueue_seconds: float
    results: list[JobResult | None]
    inbox: list[bytes]

    @property
    def succeeded(self) -> int:
        return sum(1 for result in self.results if result is not None and result.ok)

    @property
    def missing(self) -> int:
        return sum(1 for result in self.results if result is None)


async def run_batch(
    producer: Producer, jobs: list[dict[str, Any]], *, timeout: float, workers: Workers | None = None
) -> Batch:
    """Submit ``jobs`` at once and wait until every one has a result.

    Waiting counts the producer's inbox (one entry per finished job) with LLEN every 10 ms instead of
    awaiting each handle, so the measuring process spends almost no CPU the workers could use.
    """
    started = time.monotonic()
    handles = await producer.submit_many(jobs)
    enqueued = time.monotonic()
    deadline = started + timeout
    while await producer.redis.llen(producer.inbox) < len(handles):
        if time.monotonic() > deadline:
            done = await producer.redis.llen(producer.inbox)
            raise BenchError(f"only {done} of {len(handles)} jobs finished within {timeout:g} s")
        if workers is not None:
            workers.check_alive()
        await asyncio.sleep(0.01)
    finished = time.monotonic()
    ids = [handle.job_id for handle in handles]
    results: list[JobResult | None] = []
    for start in range(0, len(ids), 5000):
        results += await producer.store.get_results(ids[start : start + 5000])
    inbox = await producer.redis.lrange(producer.inbox, 0, -1)
    return Batch(finished - started, enqueued - started, results, inbox)


async def warm_up(
    producer: Producer, workers: Workers, job: dict[str, Any], *, timeout: float = 120.0
) -> None:
    """Run single jobs until each worker process has finished one: imports done, connections open."""
    wanted = {str(pid) for pid in workers.pids}
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen:
        if time.monotonic() > deadline:
            raise BenchError(f"workers {sorted(wanted - seen)} ran no job within {timeout:g} s")
        workers.check_alive()
        handles = await producer.submit_many([job] * len(wanted))
        for handle in handles:
            result = await handle.result(timeout=timeout)
            if result.worker_id:
                seen.add(result.worker_id.split(":")[1])
        await asyncio.sleep(0.05)


@dataclass
class QueueRun:
    """A batch through the queue, the provider's counters for it, and the CPU it took."""

    batch: Batch
    stats: dict[str, Any]
    worker_cpu_seconds: float
    machine_busy: float


async def queue_run(
    redis_url: str,
    provider: ProviderProcess,
    workers: Workers,
    batch_jobs: list[dict[str, Any]],
    *,
    timeout: float,
) -> QueueRun:
    """Warm the workers up, then start from a clean slate (empty Redis, fresh limiter buckets, provider
    counters and buckets reset) and run ``batch_jobs`` through them."""
    settings = producer_settings(redis_url)
    async with Producer(settings) as producer:
        await warm_up(producer, workers, batch_jobs[0])
    flush(redis_url)
    provider.control("reset")
    async with Producer(settings) as producer:
        cpu, machine = workers.cpu_seconds(), MachineCpu()
        batch = await run_batch(producer, batch_jobs, timeout=timeout, workers=workers)
        return QueueRun(batch, provider.stats(), workers.cpu_seconds() - cpu, machine.busy())


class MachineCpu:
    """The share of the whole machine's CPU time (every core, every process) that was busy since this
    object was made: near 1.0 means the figures were limited by CPU, ours or another tenant's."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def busy(self) -> float:
        busy, total = self._read()
        return (busy - self._start[0]) / max(total - self._start[1], 1)
