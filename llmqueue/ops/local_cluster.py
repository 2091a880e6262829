"""Redis and worker processes on this machine, for ``llmqueue run``'s one-command mode.

Redis is the one the user names, or else a private ``redis-server`` with AOF persistence whose files
live in a directory named after the batch, so an interrupted run can be resumed from it.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
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
    grace, and are killed after ``stop_timeout`` seconds) and an embedded Redis is stopped, its data
    left in ``data_dir`` for the caller to keep (a resume) or remove.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        workers: int,
        data_dir: Path,
        worker_env: Mapping[str, str] | None = None,
        stop_timeout: float = 45.0,
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
            self._redis = EmbeddedRedis(appendonly=True, data_dir=self.data_dir / "redis")
            self._redis.start()
        try:
            self._start_workers(1)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_workers()
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def check_workers(self) -> None:
        """Raise WorkerDiedError, with the end of its log, if any worker has exited."""
        for index, worker in enumerate(self._workers):
            code = worker.poll()
            if code is not None:
                log = self._log_path(index).read_text(errors="replace").splitlines()[-15:]
                raise WorkerDiedError(f"worker {index} exited with code {code}:\n" + "\n".join(log))

    @property
    def workers_waiting(self) -> int:
        """Workers not started yet (see :meth:`start_other_workers`)."""
        return self.worker_count - len(self._workers)

    def start_other_workers(self) -> None:
        """Start the workers that wait for the first to be ready."""
        self._start_workers(self.workers_waiting)

    def stop_workers(self) -> None:
        stop_processes(self._workers, timeout=self.stop_timeout)
        self._workers = []

    def _start_workers(self, count: int) -> None:
        env = {**self.worker_env, "REDIS_URL": self.redis_url}
        for index in range(len(self._workers), len(self._workers) + count):
            with self._log_path(index).open("ab") as log:
                # The user's own LLM_* settings reach the workers; the run's own come on top.
                self._workers.append(start_worker(env, stdout=log, inherit_settings=True, own_session=True))

    def _log_path(self, index: int) -> Path:
        return self.data_dir / f"worker-{index}.log"
