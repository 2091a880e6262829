"""Redis and worker processes on this machine, for ``llmqueue run``'s one-command mode.

Redis is the one the user names, or else a private ``redis-server`` with AOF persistence whose files
live in a directory named after the batch, so an interrupted run can be resumed from it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from llmqueue.errors import LLMQueueError, WorkerDiedError
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.ops.processes import start_worker, stop_processes


def run_dir(batch_id: str) -> Path:
    """Where an embedded run of ``batch_id`` keeps its Redis data and worker logs."""
    return Path(tempfile.gettempdir()) / f"llmqueue-run-{batch_id}"


class LocalCluster:
    """Redis (given, or embedded in ``data_dir``) plus ``workers`` worker processes.

    ``worker_env`` is added to each worker's environment (settings such as ``LLM_RPM``). Only the first
    worker starts at once: importing LiteLLM takes seconds of CPU, and several processes importing on a
    small machine would each take several times longer, delaying the first call. The caller starts the
    others with :meth:`start_other_workers` once the first is ready. Use it as a context manager; on
    exit the workers get SIGTERM (they finish or put back their running calls within their shutdown
    grace, and are killed after ``stop_timeout`` seconds) and only then is an embedded Redis stopped,
    its data left in ``data_dir`` for the caller to keep (a resume) or remove. A KeyboardInterrupt while
    the workers finish (a second Ctrl-C) kills them at once; Redis is still stopped after them. If this
    process is killed, ``llmqueue.ops.reaper`` keeps that order, and removes ``data_dir`` when it is
    ``temporary_dir`` (a run against the user's Redis keeps only worker logs there).

    ``on_stopping(message)`` is told, as the workers are asked to stop, how long it may take.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        workers: int,
        data_dir: Path,
        worker_env: Mapping[str, str] | None = None,
        stop_timeout: float = 45.0,
        on_stopping: Callable[[str], None] | None = None,
        temporary_dir: bool = False,
    ) -> None:
        if workers < 1:
            raise LLMQueueError("--workers must be at least 1")
        self.data_dir = data_dir
        self.stop_timeout = stop_timeout
        self.worker_count = workers
        self.worker_env = dict(worker_env or {})
        self._given_url = redis_url
        self._redis: EmbeddedRedis | None = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._first_started_at: float | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self.on_stopping = on_stopping
        self.temporary_dir = temporary_dir

    @property
    def embedded(self) -> bool:
        return self._given_url is None

    @property
    def redis_url(self) -> str:
        if self._given_url is not None:
            return self._given_url
        if self._redis is None:
            raise LLMQueueError("the local cluster is not started")
        return self._redis.url

    def __enter__(self) -> LocalCluster:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            self._redis = EmbeddedRedis(
                appendonly=True, data_dir=self.data_dir / "redis", dies_with_parent=False
            )
            self._redis.start()
        try:
            self._start_workers(1)
            self._start_reaper()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        interrupted = exc_type is not None and issubclass(
            exc_type, KeyboardInterrupt | asyncio.CancelledError
        )
        try:
            self.stop_workers(announce=interrupted)
        finally:
            if self._redis is not None:
                self._redis.close()
                self._redis = None
            if self._reaper is not None:
                stop_processes([self._reaper], timeout=5)  # it exits by itself once Redis is gone
                self._reaper = None

    def check_workers(self) -> None:
        """Raise WorkerDiedError, with the end of its log, if any worker has exited."""
        for index, worker in enumerate(self._workers):
            code = worker.poll()
            if code is not None:
                log = self._log_path(index).read_text(errors="replace").splitlines()[-15:]
                raise WorkerDiedError(f"worker {index} exited with code {code}:\n" + "\n".join(log))

    def starting_message(self) -> str:
        """Why no worker of the cluster has come up yet, while they are alive (``check_workers``)."""
        age = 0.0 if self._first_started_at is None else time.monotonic() - self._first_started_at
        return (
            f"waiting for the run's first worker: started {age:.0f} s ago, still starting (it imports "
            f"LiteLLM first; its log: {self._log_path(0)})"
        )

    @property
    def workers_waiting(self) -> int:
        """Workers not started yet (see :meth:`start_other_workers`)."""
        return self.worker_count - len(self._workers)

    def start_other_workers(self) -> None:
        """Start the workers that wait for the first to be ready (the reaper then watches them too)."""
        self._start_workers(self.workers_waiting)
        if self._reaper is not None:
            stop_processes([self._reaper], timeout=5)
            self._start_reaper()

    def stop_workers(self, *, announce: bool = False) -> None:
        """SIGTERM the workers and wait for them to store or put back their calls in flight; a
        KeyboardInterrupt meanwhile (a second Ctrl-C) kills them at once, then is raised again.
        ``announce`` tells ``on_stopping`` (an interrupted run: the user waits for this)."""
        running = [worker for worker in self._workers if worker.poll() is None]
        if announce and running and self.on_stopping is not None:
            self.on_stopping(
                f"stopping {len(running)} worker(s): calls in flight may finish for up to "
                f"{self.stop_timeout:g} s and their results are kept. Press Ctrl-C again to stop at once "
                "(calls in flight are then lost and paid again by a resume)"
            )
        try:
            stop_processes(self._workers, timeout=self.stop_timeout)
        except KeyboardInterrupt:
            stop_processes(self._workers, timeout=5, stop_signal=signal.SIGKILL)
            raise
        finally:
            self._workers = [worker for worker in self._workers if worker.poll() is None]

    def _start_reaper(self) -> None:
        redis_pid = 0 if self._redis is None else self._redis.pid
        if redis_pid is None:
            return
        args = [str(os.getpid()), f"{self.stop_timeout:g}", str(redis_pid)]
        if self.temporary_dir:
            args += ["--remove", str(self.data_dir)]
        args += [str(worker.pid) for worker in self._workers]
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "llmqueue.ops.reaper", *args],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # neither a terminal's Ctrl-C nor this process's death stops it
        )

    def _start_workers(self, count: int) -> None:
        env = {**self.worker_env, "REDIS_URL": self.redis_url}
        if self._first_started_at is None:
            self._first_started_at = time.monotonic()
        for index in range(len(self._workers), len(self._workers) + count):
            with self._log_path(index).open("ab") as log:
                # The user's own LLM_* settings reach the workers; the run's own come on top.
                self._workers.append(start_worker(env, stdout=log, inherit_settings=True, own_session=True))

    def _log_path(self, index: int) -> Path:
        return self.data_dir / f"worker-{index}.log"
