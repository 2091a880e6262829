"""What the reliability tests share: worker processes, their logs, jobs, and waiting for results.

Workers run as ``python -m llmqueue worker -v`` (the command users run), configured by environment
variables only, in a scratch directory (so no ``config.toml`` is picked up), with stdout and stderr in
files the tests read afterwards: the job events in the log say which worker started which job when.

This is a plain module, not a ``conftest.py``: a second ``conftest.py`` under ``tests/`` would shadow
the ``conftest`` module the other test files import from.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.models import JobResult
from llmqueue.ops.processes import start_worker, stop_processes, worker_environment

MODEL = "openai/sim-model"
# ``llmqueue worker`` with LiteLLM's debug logging on: LITELLM_LOG only sets the level of LiteLLM's own
# handler, while its loggers stay at the root's level unless ``_turn_on_debug()`` is called in-process.
_LITELLM_DEBUG_MAIN = "import litellm; litellm._turn_on_debug(); from llmqueue.cli import main; main()"
_STAMP = r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ "
_JOB_EVENT = re.compile(_STAMP + r"llmqueue\.jobs: job (?P<job>\S+) (?P<event>\w+)")
_LOOP_EVENT = re.compile(_STAMP + r"llmqueue\.worker: job (?P<job>\S+) (?P<mark>picked|done|back|failed)\b")
# The worker loop's lines: a job picked up (claimed), finished, put back (Retry or cancelled), failed.
_LOOP_MARKS = {"picked": "picked", "done": "finished", "back": "requeued", "failed": "worker_failed"}


def child_env(**settings: str) -> dict[str, str]:
    """This process's environment without any llmqueue or LiteLLM settings, plus ``settings``."""
    return worker_environment(settings, inherit_settings=False)


def worker_env(redis_url: str, base_url: str, api_key: str, **settings: Any) -> dict[str, str]:
    """Worker settings as environment variables: ``worker_in_progress_ttl=4`` → ``WORKER_IN_PROGRESS_TTL``."""
    env = {
        "REDIS_URL": redis_url,
        "LLM_MODEL": MODEL,
        "LLM_BASE_URL": base_url,
        "LLM_API_KEY": api_key,
        "WORKER_POLL_DELAY": "0.01",
    }
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env


@dataclass(frozen=True)
class JobEvent:
    """One job's log line: when (epoch seconds), which job, which event.

    ``event`` is the runner's (``started``: a provider call is made, ``succeeded`` …) or the worker
    loop's (``picked``: the worker claimed the job, ``finished``, ``requeued``, ``worker_failed``).
    """

    at: float
    job_id: str
    event: str


class WorkerProcess:
    """One ``llmqueue worker`` child process logging to ``<workdir>/<name>.out`` / ``.err``."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        workdir: Path,
        args: Sequence[str] = (),
        *,
        litellm_debug: bool = False,
    ) -> None:
        self.name = name
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        command = [sys.executable, "-c", _LITELLM_DEBUG_MAIN, "worker"] if litellm_debug else None
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = start_worker(
                env, stdout=out, stderr=err, cwd=workdir, args=["-v", *args], command=command
            )
        self.killed_at: float | None = None
        self.terminated = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        """Everything the process wrote, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr()

    def events(self) -> list[JobEvent]:
        found = []
        for line in self.stderr().splitlines():
            job_event, loop_event = _JOB_EVENT.match(line), _LOOP_EVENT.match(line)
            if job_event:
                found.append(JobEvent(_epoch(job_event["date"]), job_event["job"], job_event["event"]))
            elif loop_event and loop_event["mark"] in _LOOP_MARKS:
                found.append(
                    JobEvent(_epoch(loop_event["date"]), loop_event["job"], _LOOP_MARKS[loop_event["mark"]])
                )
        return found

    def logged_at(self, text: str) -> float | None:
        """When the first log line containing ``text`` was written (epoch seconds), if one was."""
        for line in self.stderr().splitlines():
            if text in line and re.match(_STAMP, line):
                return _epoch(line[:23])
        return None

    def held(self) -> set[str]:
        """Jobs this worker had claimed and not let go of (picked up, not finished or put back)."""
        last: dict[str, str] = {}
        for event in self.events():
            if event.event in _LOOP_MARKS.values():
                last[event.job_id] = event.event
        return {job for job, event in last.items() if event == "picked"}

    def calling(self) -> set[str]:
        """Jobs whose provider call this worker had started and not seen end."""
        last: dict[str, str] = {}
        for event in self.events():
            if event.event not in _LOOP_MARKS.values():
                last[event.job_id] = event.event
        return {job for job, event in last.items() if event == "started"}

    async def wait_started(self, timeout: float = 90) -> None:
        """Wait until the worker logs that it is taking jobs."""
        deadline = time.monotonic() + timeout
        while "started on queue" not in self.stderr():
            if not self.alive:
                raise AssertionError(f"worker {self.name} exited {self.process.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} did not start in {timeout}s:\n{self.stderr()}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self.killed_at = time.time()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        self.terminated = True
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} still running after {timeout}s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        """SIGTERM unless already sent, then SIGKILL if the process is still there after 15 s."""
        if self.alive and not self.terminated:
            self.terminate()
        stop_processes([self.process], timeout=15, stop_signal=None)


class Workers:
    """The worker processes a test started; every one is stopped when the test ends."""

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.all: list[WorkerProcess] = []

    def start(
        self, count: int = 1, args: Sequence[str] = (), *, litellm_debug: bool = False, **env: str
    ) -> list[WorkerProcess]:
        """Start ``count`` workers with ``args`` after ``llmqueue worker -v`` and ``env`` over the test's."""
        started = [
            WorkerProcess(
                f"worker{len(self.all) + i}",
                {**self.env, **env},
                self.workdir,
                args,
                litellm_debug=litellm_debug,
            )
            for i in range(count)
        ]
        self.all += started
        return started

    async def start_ready(
        self, count: int = 1, args: Sequence[str] = (), *, litellm_debug: bool = False, **env: str
    ) -> list[WorkerProcess]:
        started = self.start(count, args, litellm_debug=litellm_debug, **env)
        await asyncio.gather(*(w.wait_started() for w in started))
        return started

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.all if w.alive]

    def events(self) -> list[JobEvent]:
        return sorted((e for w in self.all for e in w.events()), key=lambda e: e.at)

    def stop(self) -> None:
        for worker in self.all:
            if worker.alive:
                worker.terminate()
        for worker in self.all:
            worker.stop()


@contextmanager
def worker_processes(env: Mapping[str, str], workdir: Path) -> Iterator[Workers]:
    workers = Workers(env, workdir)
    try:
        yield workers
    finally:
        workers.stop()


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def chat_jobs(count: int, prefix: str, **fields: Any) -> list[dict[str, Any]]:
    """``count`` chat jobs with ids ``<prefix>-<n>``."""
    return [
        {"id": f"{prefix}-{n}", "messages": [{"role": "user", "content": f"{prefix} question {n}"}], **fields}
        for n in range(count)
    ]


async def wait_for_results(
    redis: Redis, job_ids: Iterable[str], timeout: float, *, poll: float = 0.1
) -> dict[str, JobResult]:
    """Every job's stored result, polling Redis; fails naming the jobs still missing after ``timeout``."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        raws = await redis.mget([keys.result(job_id) for job_id in ids])
        if all(raw is not None for raw in raws):
            return {job_id: JobResult.model_validate_json(raw) for job_id, raw in zip(ids, raws, strict=True)}
        if time.monotonic() > deadline:
            missing = [job_id for job_id, raw in zip(ids, raws, strict=True) if raw is None]
            raise AssertionError(f"{len(missing)} job(s) have no result after {timeout}s: {missing[:10]}")
        await asyncio.sleep(poll)


async def count_keys(redis: Redis, pattern: str) -> int:
    return len([key async for key in redis.scan_iter(match=pattern, count=1000)])


async def wait_until(condition: Any, timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``condition()`` (sync or async) until true, or fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(poll)
