"""How ``llmqueue run`` starts: on its embedded Redis its first worker comes up while the file is still
being checked (its LiteLLM import takes seconds); against a shared Redis the file is checked first (the
workers would take other batches' jobs); and a bad line stops the run with nothing queued or sent."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from rich.console import Console

from llmqueue import keys
from llmqueue.batches import run as run_module
from llmqueue.batches.input import FileCheck
from llmqueue.batches.options import RunOptions
from llmqueue.batches.run import run_batch
from llmqueue.errors import InvalidBatchFileError
from llmqueue.ops.local_cluster import LocalCluster, run_dir
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import chat_file, provider_env, read_jsonl
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

UNUSED_REDIS = "redis://127.0.0.1:1/0"
"""The settings' Redis of a run on its embedded one: nothing may use it."""
WORKER_PATIENCE = 120.0
"""Seconds the check waits for a worker to come up: only a run that starts none waits this long."""


@pytest.fixture
def clusters(monkeypatch: pytest.MonkeyPatch) -> list[LocalCluster]:
    """The run's local clusters (its Redis and workers), as each is entered."""
    entered: list[LocalCluster] = []
    real_enter = LocalCluster.__enter__

    def enter(cluster: LocalCluster) -> LocalCluster:
        entered.append(real_enter(cluster))
        return cluster

    monkeypatch.setattr(LocalCluster, "__enter__", enter)
    return entered


@pytest.fixture
def check_once_a_worker_is_up(clusters: list[LocalCluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's check of its file starts only once one of its workers has registered in its Redis: a
    run that starts its workers after the check never gets there."""
    real_check = run_module.check_file

    def check(path: Path, **options: Any) -> FileCheck:
        deadline = time.monotonic() + WORKER_PATIENCE
        while not clusters or not any(
            redis_sync.Redis.from_url(clusters[0].redis_url).scan_iter(match=keys.WORKER_PATTERN)
        ):
            if time.monotonic() > deadline:
                raise AssertionError("no worker of the run came up while its file was being checked")
            time.sleep(0.05)
        return real_check(path, **options)

    monkeypatch.setattr(run_module, "check_file", check)


def run_options(
    source: Path, tmp_path: Path, provider: ProviderProcess, redis_url: str | None = None
) -> RunOptions:
    """A run of ``source`` with one worker, on its own embedded Redis unless ``redis_url`` is given."""
    return RunOptions(
        file=source,
        output=tmp_path / "out.jsonl",
        batch_id=f"start-{time.time_ns()}",
        workers=1,
        redis_url=redis_url,
        worker_env={**provider_env(provider), "WORKER_POLL_DELAY": "0.01"},
    )


@pytest.mark.usefixtures("check_once_a_worker_is_up")
async def test_the_first_worker_comes_up_while_the_file_is_being_checked(tmp_path: Path) -> None:
    source, ids = chat_file(tmp_path / "in.jsonl", 20)
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        options = run_options(source, tmp_path, provider)
        settings = make_settings(UNUSED_REDIS, provider.base_url)
        summary = await run_batch(options, settings, Console(file=io.StringIO()))
        stats = provider.stats()

    assert summary.ok
    assert [record["custom_id"] for record in read_jsonl(options.output)] == ids
    assert stats["requests"] == stats["succeeded"] == 20


@pytest.mark.usefixtures("check_once_a_worker_is_up")
async def test_a_bad_line_found_while_a_worker_waits_queues_and_sends_nothing(tmp_path: Path) -> None:
    source, _ = chat_file(tmp_path / "in.jsonl", 50)
    with source.open("a", encoding="utf-8") as out:
        out.write("{oops\n")
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        options = run_options(source, tmp_path, provider)
        settings = make_settings(UNUSED_REDIS, provider.base_url)
        with pytest.raises(InvalidBatchFileError) as raised:
            await run_batch(options, settings, Console(file=io.StringIO()))
        stats = provider.stats()

    assert str(raised.value).startswith(f"{source}: 1 of 51 line(s) are invalid; nothing was enqueued")
    assert "  line 51: not valid JSON" in str(raised.value)
    assert stats["requests"] == 0
    assert options.batch_id is not None
    assert not run_dir(options.batch_id).exists()  # its embedded Redis and what it held are gone
    assert not options.output.exists()


async def test_against_a_shared_redis_the_file_is_checked_before_any_worker_starts(
    tmp_path: Path, redis_url: str, clusters: list[LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"  # where the run makes its directory (worker logs)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    # Workers on a shared Redis take whatever is queued there: started before a bad line is found,
    # they would run other batches' jobs for a run that is refused.
    real_check = run_module.check_file
    started_before: list[bool] = []

    def check(path: Path, **options: Any) -> FileCheck:
        started_before.append(bool(clusters))
        return real_check(path, **options)

    monkeypatch.setattr(run_module, "check_file", check)
    source, _ = chat_file(tmp_path / "in.jsonl", 10)
    with source.open("a", encoding="utf-8") as out:
        out.write("{oops\n")
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        options = run_options(source, tmp_path, provider, redis_url)
        with pytest.raises(InvalidBatchFileError):
            await run_batch(options, make_settings(redis_url, provider.base_url), Console(file=io.StringIO()))
        assert provider.stats()["requests"] == 0
    assert started_before == [False] and not clusters
    assert not any(scratch.iterdir())  # the refused run left no directory behind
