"""Redis and worker processes on this machine, for ``llmqueue run``'s one-command mode.

Redis is the one the user names, or else a private ``redis-server`` with AOF persistence whose files
live in a directory named after the batch, so an interrupted run can be resumed from it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from redis.asyncio import Redis

from llmqueue.errors import LLMQueueError, WorkerDiedError
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.ops.processes import start_worker, stop_processes, stop_workers_now
from llmqueue.ops.registry import read_workers
from llmqueue.ops.start_gate import close_gate, open_gate

STOP_NOW_SECONDS = 1.0
"""Seconds an interrupted run's workers get to put their calls in flight back before they are killed."""


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
    its data left in ``data_dir`` for the caller to keep (a resume) or remove. Left by a
    KeyboardInterrupt or a cancellation (Ctrl-C), it stops the workers at once instead
    (:func:`~llmqueue.ops.processes.stop_workers_now`): their calls in flight are abandoned and their
    jobs go back to the queue, so the user waits no grace. If this process is killed,
    ``llmqueue.ops.reaper`` stops the workers the same way, then Redis, and removes ``data_dir`` when it
    is ``temporary_dir`` (a run against the user's Redis keeps only worker logs there).

    ``gated``: the workers started before :meth:`open_gate` start up and then take no job until it is
    called (``llmqueue.ops.start_gate``), so they can start while the caller still checks its input;
    those stopped before it exit having taken nothing.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        workers: int,
        data_dir: Path,
        worker_env: Mapping[str, str] | None = None,
        stop_timeout: float = 45.0,
        temporary_dir: bool = False,
        gated: bool = False,
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
        """When the first worker was started, in Unix seconds: the workers' heartbeats tell that clock."""
        self.workers_started = 0
        """Worker processes started so far (those stopped since included)."""
        self._reaper: subprocess.Popen[bytes] | None = None
        self.temporary_dir = temporary_dir
        self.gate_open = not gated

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
            self.stop_workers(now=interrupted)
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
        age = self.seconds_since_first_start()
        return (
            f"waiting for the run's first worker: started {age:.0f} s ago, still starting (it imports "
            f"LiteLLM first; its log: {self._log_path(0)})"
        )

    async def first_worker_start(self, redis: Redis) -> float | None:
        """Seconds the first worker took to start up (its heartbeat's ``started_at``, set once it has
        imported what it calls with, less when it was started), once it has registered; else None.
        Only the run's own worker counts, not others on the same Redis."""
        if not self._workers or self._first_started_at is None:
            return None
        pid, host = self._workers[0].pid, socket.gethostname()
        for info in await read_workers(redis):
            if info.pid == pid and info.host == host:
                return max(0.0, info.started_at - self._first_started_at)
        return None

    def seconds_since_first_start(self) -> float:
        """Seconds since the first worker was started (0 before it is)."""
        return 0.0 if self._first_started_at is None else max(0.0, time.time() - self._first_started_at)

    @property
    def workers_waiting(self) -> int:
        """Workers not started yet (see :meth:`start_other_workers`)."""
        return self.worker_count - self.workers_started

    def start_other_workers(self) -> None:
        """Start the workers that wait for the first to be ready (the reaper then watches them too)."""
        self._start_workers(self.workers_waiting)
        if self._reaper is not None:
            # The new reaper first: were this process killed between the two, no reaper would be left to
            # stop the workers and remove a temporary directory (two reapers at once do no harm).
            watching = self._reaper
            self._start_reaper()
            stop_processes([watching], timeout=5)

    def open_gate(self) -> None:
        """Let the workers take jobs (those started from now on take them at once)."""
        self.gate_open = True
        for worker in self._workers:
            open_gate(worker)

    def stop_workers(self, *, now: bool = False) -> None:
        """SIGTERM the workers and wait for them to store or put back their calls in flight (``now``:
        abandon those calls, put their jobs back and exit within ``STOP_NOW_SECONDS``); a
        KeyboardInterrupt meanwhile kills them at once, then is raised again."""
        for worker in self._workers:
            close_gate(worker)  # one still gated stops at once
        try:
            if now:
                stop_workers_now(self._workers, timeout=STOP_NOW_SECONDS)
            else:
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
        args = [str(os.getpid()), f"{STOP_NOW_SECONDS:g}", str(redis_pid)]
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
        args, stdin = ([], subprocess.DEVNULL) if self.gate_open else (["--gated"], subprocess.PIPE)
        if self._first_started_at is None:
            self._first_started_at = time.time()
        for index in range(self.workers_started, self.workers_started + count):
            with self._log_path(index).open("ab") as log:
                # The user's own LLM_* settings reach the workers; the run's own come on top.
                self._workers.append(
                    start_worker(
                        env, args=args, stdin=stdin, stdout=log, inherit_settings=True, own_session=True
                    )
                )
                self.workers_started += 1

    def _log_path(self, index: int) -> Path:
        return self.data_dir / f"worker-{index}.log"
