"""LocalCluster starts one worker at once and the others when asked (``llmqueue run``'s fast start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmqueue.errors import LLMQueueError
from llmqueue.ops.local_cluster import LocalCluster


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
