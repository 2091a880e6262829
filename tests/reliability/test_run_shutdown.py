"""``llmqueue run`` stops what it started in order (workers, then Redis) even when it is killed, pays for
no call twice on resume, stops on one Ctrl-C, and runs a batch only once at a time.

Real processes: ``llmqueue run`` with its embedded Redis and workers, the simulated provider in its own
process with a latency, so that calls are in flight when ``run`` is stopped.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from llmqueue.ops.reaper import REDIS_STOP_SECONDS
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import (
    batch_name,
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
__all__ = ["batch_name"]  # a fixture, imported for the tests below

GRACE = 10  # WORKER_SHUTDOWN_GRACE; run gives its workers this + 15 s before killing them
JOBS = 40
RESUME_AT_ONCE = {"WORKER_MAX_JOBS": str(JOBS)}
"""The resumes' workers take every line left at once (the runs they resume take a few at a time)."""


def _wait_for_calls(provider: ProviderProcess, process: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 90
    while provider.stats()["succeeded"] < count or provider.stats()["in_flight"] == 0:
        assert time.monotonic() < deadline, "no calls in flight within 90 s"
        assert process.poll() is None, "run ended early"
        time.sleep(0.1)


def test_a_killed_run_stops_workers_before_redis_and_a_resume_pays_no_call_twice(
    tmp_path: Path, batch_name: str
) -> None:
    source, ids = chat_file(tmp_path / "slow.jsonl", JOBS)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=1.5)) as provider:
        env = run_env(
            **provider_env(provider),
            WORKER_SHUTDOWN_GRACE=str(GRACE),
            WORKER_MAX_JOBS="4",
            WORKER_POLL_DELAY="0.01",
        )
        process = start_run([str(source), "-o", str(output), "--batch", batch_name], env, tmp_path)
        try:
            _wait_for_calls(provider, process, 8)
            started = children_of(process.pid)  # redis-server, two workers, the reaper
            workers = [
                pid for pid in started if b"llmqueue\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            in_flight = provider.stats()["in_flight"]
            process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + GRACE + 15 + REDIS_STOP_SECONDS + 10
            workers_gone = None
            while any(is_alive(pid) for pid in started):
                assert time.monotonic() < deadline, [pid for pid in started if is_alive(pid)]
                if workers_gone is None and not any(is_alive(pid) for pid in workers):
                    workers_gone = time.monotonic() - killed
                time.sleep(0.1)
            outlived = time.monotonic() - killed
            workers_gone = outlived if workers_gone is None else workers_gone
        finally:
            stop(process)
        paid_before = provider.stats()["succeeded"]
        # Every line left in flight at once: the resume need not wait out the slow calls a few at a time.
        code, stderr = run(["--resume", batch_name, "-o", str(output)], {**env, **RESUME_AT_ONCE}, tmp_path)
        paid = provider.stats()["succeeded"]
    print(
        f"\nrun killed with {in_flight} calls in flight: its workers gone {workers_gone:.1f} s later, all "
        f"{len(started)} children {outlived:.1f} s later; {paid_before} calls paid before the resume, "
        f"{paid} in all for {JOBS} jobs"
    )
    assert len(started) == 4 and len(workers) == 2
    # The workers are given FINISH_SECONDS to store what is answered, then stopped: gone within 5 s.
    assert workers_gone <= 5.0
    assert outlived <= 5.0 + REDIS_STOP_SECONDS + 2
    assert code == 0, stderr
    assert [r["custom_id"] for r in read_jsonl(output)] == ids
    assert paid == JOBS  # the calls in flight at the kill were stored, not paid again


def test_a_second_run_of_a_batch_is_refused_and_one_ctrl_c_stops_the_first(
    tmp_path: Path, batch_name: str, redis_url: str
) -> None:
    source, ids = chat_file(tmp_path / "twice.jsonl", JOBS)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=1.0)) as provider:
        env = run_env(**provider_env(provider), WORKER_MAX_JOBS="2", WORKER_POLL_DELAY="0.01")
        # --no-cache: the second round sends the same lines, which the response cache would answer.
        for shared in (["--no-cache"], ["--no-cache", "--redis-url", redis_url]):
            provider.control("reset")
            first = start_run([str(source), "-o", str(output), "--batch", batch_name, *shared], env, tmp_path)
            try:
                _wait_for_calls(provider, first, 2)
                again = run([str(source), "-o", str(output), "--batch", batch_name, *shared], env, tmp_path)
                resumed = run(["--resume", batch_name, "-o", str(output), *shared], env, tmp_path)
                assert first.poll() is None, "the first run ended before it could be interrupted"
                first.send_signal(signal.SIGINT)
                code, stderr = finish(first)
            finally:
                stop(first)
            for refused_code, refused in (again, resumed):
                assert refused_code == 2, refused
                assert f"batch {batch_name} is being run by another `llmqueue run`" in refused, refused
            assert code == 130, stderr
            assert "interrupted: finished jobs are kept" in stderr, stderr
            assert "Ctrl-C again" not in stderr, stderr
            resume = ["--resume", batch_name, "-o", str(output), *shared]
            code, stderr = run(resume, {**env, **RESUME_AT_ONCE}, tmp_path)
            assert code == 0, stderr
            assert [r["custom_id"] for r in read_jsonl(output)] == ids
            # One run's calls; the resume makes again only those Ctrl-C abandoned, and a call the
            # provider answered just as it was abandoned is the one counted twice (4 slots: 2 x 2).
            assert JOBS <= provider.stats()["succeeded"] <= JOBS + 4
