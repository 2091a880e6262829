"""LLMQueueWorker copies and overrides parts of arq's Worker; this fails when arq's copies change.

``main`` and ``_poll_iteration`` are copied with changes, ``start_jobs`` is replaced by the claim
script, ``finish_job`` by the release script, and ``run_job`` is copied as
``llmqueue.queue.arq_run.run_claimed`` with its opening transaction done by the claim script. When
arq changes any of them, re-read the new code, carry the change over to ``llmqueue/worker.py`` or
``arq_run.py``, and record the new digests here.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version

import pytest
from arq.worker import Worker

PINNED_ARQ = "0.28.0"
DIGESTS = {
    "main": "45ca1591c9717466",
    "_poll_iteration": "f8d39d823a0a59f2",
    "start_jobs": "b45797cfa40bed7f",
    "run_job": "589a19059ff84ee7",
    "finish_job": "903f09c92830d3fd",
    "_release_sem_dec_counter_on_complete": "0ed101482e942c33",
    "_jobs_started": "c5643370c110c7cd",
}


def test_arq_is_the_version_the_worker_was_checked_against() -> None:
    assert version("arq") == PINNED_ARQ


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_arqs_code_that_the_worker_copies_or_overrides_is_unchanged(name: str) -> None:
    source = inspect.getsource(getattr(Worker, name))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == DIGESTS[name], (
        f"arq's Worker.{name} changed: compare it with LLMQueueWorker before updating the digest"
    )


def test_the_worker_counts_slots_as_arq_does() -> None:
    # _poll_iteration's slot count relies on these attributes, set in arq's __init__.
    worker_init = inspect.getsource(Worker.__init__)
    assert "self.job_counter: int = 0" in worker_init
    assert "self.tasks: dict[str, asyncio.Task[Any]] = {}" in worker_init
