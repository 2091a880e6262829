"""``llmqueue run --redis-url`` however it is stopped (SIGINT as Ctrl-C, SIGTERM as a closing terminal or a
cancelled CI job, SIGKILL), while it queues a big file or while its workers call: 5 s later no worker of
it is alive and its temporary directory is gone, though the provider stalls (the calls in flight hang)
and the workers' shutdown grace is a minute. Ctrl-C and SIGTERM end ``run`` within 2 s, the issue's
bound, without waiting out the workers' shutdown grace: calls in flight are abandoned and go back to the
queue (its first worker takes calls while the file is still being queued, so both stages can have calls
in flight).

And a worker whose Redis is gone stops within 5 s of SIGTERM, not once its Redis retries run out.
Real processes throughout: ``llmqueue run`` and ``llmqueue worker``, a private redis-server, the
simulated provider in its own process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from llmqueue import keys
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import children_of, is_alive, run_env
from tests.support.reliability import worker_env, worker_processes
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

GRACE = 60
"""The workers' shutdown grace: longer than any bound here, so no way of stopping may wait it out."""
BIG = 20_000
"""Lines of the file: more than the run can finish before it is stopped."""


@pytest.fixture(scope="module")
def provider() -> Iterator[ProviderProcess]:
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.3)) as running:
        yield running


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    with path.open("w") as out:
        for n in range(BIG):
            out.write(json.dumps({"custom_id": f"r{n}", "messages": [{"role": "user", "content": f"q {n}"}]}))
            out.write("\n")
    return path


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.05)


def _seconds_until(condition: object, since: float, timeout: float) -> float:
    """Seconds from ``since`` until ``condition()`` held (polled; ``inf`` if not within ``timeout``)."""
    while not condition():  # type: ignore[operator]
        if time.monotonic() - since > timeout:
            return float("inf")
        time.sleep(0.02)
    return time.monotonic() - since


@pytest.mark.parametrize("stage", ["queueing", "running"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_run_stopped_at_any_stage_leaves_no_worker_and_no_temporary_directory(
    stage: str, signum: signal.Signals, provider: ProviderProcess, big_file: Path, tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    batch = f"stop-{stage}-{signum.name.lower()}"
    with EmbeddedRedis() as redis_server:
        env = run_env(
            LLM_MODEL="openai/sim-model",
            LLM_BASE_URL=provider.base_url,
            LLM_API_KEY=TEST_API_KEY,
            WORKER_POLL_DELAY="0.01",
            WORKER_SHUTDOWN_GRACE=str(GRACE),
            TMPDIR=str(scratch),
        )
        command = [sys.executable, "-m", "llmqueue", "run", str(big_file), "--batch", batch]
        command += ["--redis-url", redis_server.url, "--workers", "2"]
        command += ["--output", str(tmp_path / "out.jsonl")]
        run = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        redis = Redis.from_url(redis_server.url)
        try:
            if stage == "queueing":
                _wait(lambda: redis.zcard(keys.batch_jobs(batch)) > 0, 120, "run began to queue")
            else:
                _wait(lambda: int(redis.hget(keys.batch(batch), "succeeded") or 0) > 0, 180, "calls ended")
            assert run.poll() is None
            workers = [pid for pid in children_of(run.pid) if is_alive(pid)]
            assert workers, "run has started no worker"
            with provider.paused():  # the calls in flight hang: only abandoning them stops the workers
                workers = sorted({*workers, *children_of(run.pid)})  # one the ramp started meanwhile too
                stopped_at = time.monotonic()
                run.send_signal(signum)
                try:
                    _, stderr = run.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    run.kill()
                    _, stderr = run.communicate()
                    pytest.fail(f"run still running 30 s after {signum.name}: {stderr[-2000:]}")
                exited = time.monotonic() - stopped_at
                # Timed to the end (not sampled at 5 s), so a failure tells by how much the bound was missed.
                workers_gone = _seconds_until(lambda: not any(map(is_alive, workers)), stopped_at, 30)
                removed = _seconds_until(lambda: not any(scratch.iterdir()), stopped_at, 30)
            print(
                f"\n{signum.name} at {stage}: run gone after {exited:.2f} s, its workers after "
                f"{workers_gone:.2f} s, its temporary directory after {removed:.2f} s"
            )
            assert workers_gone <= 5, stderr[-3000:]
            assert removed <= 5, stderr[-3000:]
            if signum is not signal.SIGKILL:  # the workers' grace is not waited out
                assert exited < 2.0, stderr[-3000:]
        finally:
            redis.close()
            for pid in children_of(run.pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)
            if run.poll() is None:
                run.kill()
                run.wait()


async def test_a_worker_whose_redis_is_gone_stops_within_5_s_of_sigterm(
    provider: ProviderProcess, tmp_path: Path
) -> None:
    with EmbeddedRedis() as redis_server:
        env = worker_env(redis_server.url, provider.base_url, TEST_API_KEY)
        with worker_processes(env, tmp_path) as workers:
            (worker,) = await workers.start_ready(1)
            redis_server.kill()
            time.sleep(2)  # the worker meets the outage: its polls fail and are retried
            began = time.monotonic()
            worker.terminate()
            code = await worker.wait_exit(30)
            took = time.monotonic() - began
    print(f"\nworker without Redis: exit {code} {took:.2f} s after SIGTERM")
    assert took < 5, worker.stderr()[-3000:]
