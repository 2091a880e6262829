"""``llmqueue run`` of a file larger than its window, as the user runs it: what Redis holds while it runs,
what the provider was sent, and a run killed outright (SIGKILL) and resumed."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis as redis_sync

from llmqueue import keys
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import (
    STOP_TIMEOUT,
    chat_file,
    children_of,
    finish,
    is_alive,
    provider_env,
    read_jsonl,
    run,
    run_env,
    start_run,
    stop,
)
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

WINDOW = 20


def window_config(path: Path, window: int = WINDOW) -> Path:
    path.write_text(f"[batch]\nwindow = {window}\n", encoding="utf-8")
    return path


@pytest.fixture
def batch_name() -> str:
    return f"win-{time.time_ns()}"


def test_run_keeps_its_window_in_redis_and_sends_each_line_once_in_order(
    tmp_path: Path, batch_name: str, redis_url: str
) -> None:
    source, ids = chat_file(tmp_path / "big.jsonl", 400)
    output = tmp_path / "out.jsonl"
    config = window_config(tmp_path / "llmqueue.toml")
    client = redis_sync.Redis.from_url(redis_url)
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.02)) as provider:
        env = run_env(**provider_env(provider), WORKER_POLL_DELAY="0.01")
        args = [
            str(source),
            "-o",
            str(output),
            "--workers",
            "1",
            "--batch",
            batch_name,
            "--redis-url",
            redis_url,
        ]
        process = start_run([*args, "--config", str(config)], env, tmp_path)
        most_queued = most_held = 0
        totals: set[int] = set()
        try:
            while process.poll() is None:
                queued = sum(1 for _ in client.scan_iter(match=keys.arq_job("*"), count=1000))
                results = sum(1 for _ in client.scan_iter(match=keys.result(f"{batch_name}:*"), count=1000))
                most_queued, most_held = max(most_queued, queued), max(most_held, results)
                total = client.hget(keys.batch(batch_name), "total")
                if total is not None:
                    totals.add(int(total))
                time.sleep(0.02)
            code, stderr = finish(process)
        finally:
            stop(process)
        stats = provider.stats()

    assert code == 0, stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == ids
    assert all(r["llmqueue"]["status"] == "succeeded" for r in records)
    assert stats["requests"] == stats["succeeded"] == 400  # each line sent once
    assert totals == {400}  # status showed the whole file from the first look
    assert 0 < most_queued <= WINDOW
    assert most_held <= 2 * WINDOW
    # What stays of the batch once its output is written: no job's result, state or custom id.
    assert not list(client.scan_iter(match=keys.result(f"{batch_name}:*")))
    assert client.hlen(keys.batch_custom_ids(batch_name)) == 0
    assert client.zcard(keys.batch_jobs(batch_name)) == 400
    print(f"\nwindow {WINDOW}: at most {most_queued} jobs queued, {most_held} results held")


def test_a_killed_run_resumes_and_answers_every_line_once(tmp_path: Path, batch_name: str) -> None:
    source, ids = chat_file(tmp_path / "long.jsonl", 300)
    output = tmp_path / "out.jsonl"
    config = window_config(tmp_path / "llmqueue.toml")
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.05)) as provider:
        env = run_env(**provider_env(provider), WORKER_POLL_DELAY="0.01")
        args = [
            str(source),
            "-o",
            str(output),
            "--workers",
            "1",
            "--batch",
            batch_name,
            "--config",
            str(config),
        ]
        process = start_run(args, env, tmp_path)
        try:
            deadline = time.monotonic() + 60
            while provider.stats()["succeeded"] < 120:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "no progress within 60 s"
                time.sleep(0.02)
            started = children_of(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
            deadline = time.monotonic() + STOP_TIMEOUT  # its reaper stops what it started
            while [pid for pid in started if is_alive(pid)] and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop(process)
        sent_before = provider.stats()["succeeded"]
        partial = output.with_name(output.name + ".partial")
        written_before = len(partial.read_text().splitlines()) if partial.exists() else 0
        # A token cap set in the config since is for new batches: the resume keeps its batch's (none).
        # It was taken for the resume's own, already spent: the resume was refused.
        config.write_text(config.read_text(encoding="utf-8") + "max_tokens = 100\n", encoding="utf-8")

        code, stderr = run(
            [
                "--resume",
                batch_name,
                str(source),
                "-o",
                str(output),
                "--workers",
                "1",
                "--config",
                str(config),
            ],
            env,
            tmp_path,
        )
        stats = provider.stats()

    assert code == 0, stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == ids
    assert all(r["llmqueue"]["status"] == "succeeded" for r in records)
    counts = Counter(r["custom_id"] for r in records)
    assert set(counts.values()) == {1}
    assert 120 <= sent_before < 300
    assert written_before > 0  # the killed run had written its in-order prefix
    # Jobs finished before the kill were not sent again; at most those in flight then (the window) were.
    assert 300 <= stats["succeeded"] <= 300 + WINDOW
    print(
        f"\nSIGKILL after {sent_before} calls ({written_before} lines written): "
        f"{stats['succeeded']} provider calls in all"
    )
