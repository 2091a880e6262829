"""How ``llmqueue run`` starts: its first worker comes up while the file is still being checked (its
LiteLLM import takes seconds), on its embedded Redis or a shared one, where it waits at its gate and so
takes none of the other batches' jobs; and a bad line stops the run with nothing queued, taken or sent."""

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
from llmqueue.batches.control import Batches
from llmqueue.batches.input import FileCheck
from llmqueue.batches.options import RunOptions
from llmqueue.batches.run import run_batch
from llmqueue.errors import InvalidBatchFileError
from llmqueue.ops.local_cluster import LocalCluster, run_dir
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import chat_file, provider_env, read_jsonl
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

UNUSED_REDIS = "redis://127.0.0.1:1/0"
"""The settings' Redis of a run on its embedded one: nothing may use it."""
WORKER_PATIENCE = 120.0
"""Seconds the check waits for a worker to come up: only a run that starts none waits this long."""
UNHELD_WORKER_TAKES = 3.0
"""Seconds a started worker is given to take another batch's queued job before the check goes on."""
QUEUE = make_settings(UNUSED_REDIS, "http://unused").worker.queue_name


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


def wait_for_a_worker(clusters: list[LocalCluster]) -> None:
    """Return once a worker of the run's (first) cluster has registered in its Redis: it has started up."""
    assert clusters, "the run checks its file before it starts its workers"
    deadline = time.monotonic() + WORKER_PATIENCE
    while not any(redis_sync.Redis.from_url(clusters[0].redis_url).scan_iter(match=keys.WORKER_PATTERN)):
        clusters[0].check_workers()
        if time.monotonic() > deadline:
            raise AssertionError("no worker of the run came up while its file was being checked")
        time.sleep(0.05)


@pytest.fixture
def check_once_a_worker_is_up(clusters: list[LocalCluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's check of its file starts only once one of its workers has registered in its Redis: a
    run that starts its workers after the check never gets there."""
    real_check = run_module.check_file

    def check(path: Path, **options: Any) -> FileCheck:
        wait_for_a_worker(clusters)
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


@pytest.mark.usefixtures("check_once_a_worker_is_up")
async def test_against_a_shared_redis_the_first_worker_comes_up_while_the_file_is_being_checked(
    tmp_path: Path, redis_url: str
) -> None:
    source, ids = chat_file(tmp_path / "in.jsonl", 20)
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        options = run_options(source, tmp_path, provider, redis_url)
        summary = await run_batch(
            options, make_settings(redis_url, provider.base_url), Console(file=io.StringIO())
        )
        stats = provider.stats()

    assert summary.ok
    assert [record["custom_id"] for record in read_jsonl(options.output)] == ids
    assert stats["requests"] == stats["succeeded"] == 20


async def test_against_a_shared_redis_a_bad_line_found_while_a_worker_waits_takes_no_other_batch_job(
    tmp_path: Path, redis_url: str, clusters: list[LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_check = run_module.check_file

    def check(path: Path, **options: Any) -> FileCheck:
        wait_for_a_worker(clusters)
        # Time for a worker that was not held to take one of the other batch's jobs (it polls every
        # 0.01 s); a held one takes none however long this lasts.
        client = redis_sync.Redis.from_url(redis_url)
        deadline = time.monotonic() + UNHELD_WORKER_TAKES
        while client.zcard(QUEUE) == 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        return real_check(path, **options)

    monkeypatch.setattr(run_module, "check_file", check)
    scratch = tmp_path / "tmp"  # where the run makes its directory (worker logs)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    others, _ = chat_file(tmp_path / "others.jsonl", 5)
    source, _ = chat_file(tmp_path / "in.jsonl", 10)
    with source.open("a", encoding="utf-8") as out:
        out.write("{oops\n")
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        settings = make_settings(redis_url, provider.base_url)
        async with Producer(settings) as producer:
            # Another program's batch, queued in the same Redis: the run's workers must leave it alone.
            await Batches(producer.store, producer.settings).submit_file(others, "others")
        options = run_options(source, tmp_path, provider, redis_url)
        with pytest.raises(InvalidBatchFileError):
            await run_batch(options, settings, Console(file=io.StringIO()))
        requests = provider.stats()["requests"]
        async with Producer(settings) as producer:
            other = await Batches(producer.store, producer.settings).status("others")

    assert requests == 0
    assert (other.queued, other.running, other.finished) == (5, 0, 0)
    assert redis_sync.Redis.from_url(redis_url).zcard(QUEUE) == 5
    assert not any(scratch.iterdir())  # the refused run left no directory behind
