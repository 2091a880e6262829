"""LocalCluster starts one worker at once and the others when asked (``llmqueue run``'s fast start)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.errors import LLMQueueError
from llmqueue.ops.local_cluster import LocalCluster
from llmqueue.ops.reaper import alive


def test_only_the_first_worker_starts_until_the_others_are_asked_for(redis_url: str, tmp_path: Path) -> None:
    cluster = LocalCluster(redis_url=redis_url, workers=3, data_dir=tmp_path, stop_timeout=10)
    with cluster:
        assert (len(cluster._workers), cluster.workers_waiting) == (1, 2)
        cluster.start_other_workers()
        assert (len(cluster._workers), cluster.workers_waiting) == (3, 0)
        assert sorted(p.name for p in tmp_path.glob("worker-*.log")) == [
            "worker-0.log",
            "worker-1.log",
            "worker-2.log",
        ]
        cluster.check_workers()  # all three still running
    assert cluster._workers == []


def test_no_workers_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LLMQueueError, match="--workers must be at least 1"):
        LocalCluster(redis_url="redis://127.0.0.1:1/0", workers=0, data_dir=tmp_path)


class _Started:
    """Stands for a started worker process: only its pid is read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


async def test_the_first_workers_start_is_read_from_its_own_registry_entry(
    redis: Redis, tmp_path: Path
) -> None:
    cluster = LocalCluster(redis_url="redis://unused", workers=2, data_dir=tmp_path)
    cluster._workers = [_Started(4242)]  # type: ignore[list-item]
    cluster._first_started_at = 1000.0

    def entry(worker_id: str, pid: int, started_at: float) -> dict[str, str | int | float]:
        return {
            "worker_id": worker_id, "host": socket.gethostname(), "pid": pid, "queue": "arq:queue",
            "in_flight": 0, "started_at": started_at, "last_seen": started_at,
        }  # fmt: skip

    assert await cluster.first_worker_start(redis) is None
    # Another worker on the same Redis (the user's own) is not the run's.
    await redis.hset(keys.worker("theirs"), mapping=entry("theirs", 17, 900.0))
    assert await cluster.first_worker_start(redis) is None
    await redis.hset(keys.worker("ours"), mapping=entry("ours", 4242, 1003.5))
    assert await cluster.first_worker_start(redis) == 3.5


_DIES_WHILE_STARTING_THE_OTHERS = """
import os, sys
from pathlib import Path
from llmqueue.ops import local_cluster

stop_processes = local_cluster.stop_processes

def stop_then_die(processes, **kwargs):
    stop_processes(processes, **kwargs)
    print(" ".join(str(w.pid) for w in cluster._workers), flush=True)
    os._exit(0)  # killed at the worst moment: the old reaper just stopped

local_cluster.stop_processes = stop_then_die
cluster = local_cluster.LocalCluster(
    redis_url=sys.argv[1], workers=2, data_dir=Path(sys.argv[2]), temporary_dir=True, stop_timeout=10
)
cluster.__enter__()
cluster.start_other_workers()
"""


def test_run_killed_while_its_reaper_is_replaced_still_leaves_no_worker_and_no_directory(
    redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "llmqueue-run-x"
    done = subprocess.run(
        [sys.executable, "-c", _DIES_WHILE_STARTING_THE_OTHERS, redis_url, str(data_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    workers = [int(pid) for pid in done.stdout.split()]
    assert len(workers) == 2, done.stderr
    deadline = time.monotonic() + 20
    while (data_dir.exists() or any(map(alive, workers))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if alive(pid)] == []
    assert not data_dir.exists()
