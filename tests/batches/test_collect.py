"""``llmqueue results --collect``: a submitted batch written out in input order as it runs, its jobs'
keys dropped as their lines are written; real workers over HTTP to the simulated provider."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.run_lock import RedisRunLock
from llmqueue.cli import app
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.cli import runner
from tests.support.reliability import child_env, count_keys, wait_until, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("clean_environment")]

LINES = 300
MODELS = ("openai/sim-model", "openai/sim-other")
PER_JOB_KEYS = (
    "llmqueue:result:*",
    "llmqueue:state:*",
    "llmqueue:errors:*",
    "llmqueue:done:*",
    "arq:job:*",
    "arq:retry:*",
    "arq:in-progress:*",
)


def batch_file(path: Path) -> Path:
    lines = [
        {
            "custom_id": f"req-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODELS[n % 2],
                "messages": [{"role": "user", "content": f"question {n}"}],
                "max_tokens": 5,
            },
        }
        for n in range(LINES)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def llmqueue_command(redis_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmqueue", *args, "--redis-url", redis_url]


async def in_process(redis_url: str, *args: str) -> Any:
    """The command run in this process (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(runner.invoke, app, [*args, "--redis-url", redis_url])


async def submit(redis_url: str, tmp_path: Path, batch: str) -> None:
    """``llmqueue submit`` of the test's file as ``batch``."""
    submitted = await in_process(
        redis_url, "submit", str(batch_file(tmp_path / "in.jsonl")), "--batch", batch
    )
    assert submitted.exit_code == 0, submitted.output


def refusal(result: Any) -> str:
    """The message a refused command prints (its LLMQueueError's: the console entry point prints it)."""
    assert result.exit_code != 0, result.output
    return str(result.exception)


async def written(redis: Redis, batch: str) -> int:
    return int(await redis.hget(keys.batch(batch), "written") or 0)


async def test_collect_writes_each_line_once_in_input_order_across_a_killed_collector_and_drops_the_keys(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    batch, out = "collected", tmp_path / "out.jsonl"
    await submit(redis_url, tmp_path, batch)
    env = child_env()

    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.05)) as provider:
        worker_settings = worker_env(redis_url, provider.base_url, TEST_API_KEY, worker_max_jobs=4)
        with worker_processes(worker_settings, tmp_path) as workers:
            await workers.start_ready(2)
            first = subprocess.Popen(
                llmqueue_command(redis_url, "results", batch, "-o", str(out), "--collect"),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                await wait_until(lambda: written(redis, batch), 120, "a first line collected")
                await wait_until(
                    lambda: count_keys(redis, "llmqueue:result:*"), 60, "a result not yet written"
                )
                os.kill(first.pid, signal.SIGKILL)  # mid-batch, maybe mid-write
            finally:
                first.wait(timeout=30)
            written_by_first = await written(redis, batch)
            again = subprocess.run(
                llmqueue_command(redis_url, "results", batch, "-o", str(out), "--collect"),
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
        requests = provider.stats()["requests"]

    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [record["custom_id"] for record in records] == [f"req-{n}" for n in range(LINES)]
    assert all(record["response"]["status_code"] == 200 for record in records)
    assert [record["response"]["body"]["model"].split("/")[-1] for record in records[:2]] == [
        model.split("/")[-1] for model in MODELS
    ]
    assert 0 < written_by_first < LINES
    assert requests == LINES
    assert not (tmp_path / "out.jsonl.partial").exists()
    for pattern in PER_JOB_KEYS:
        assert await count_keys(redis, pattern) == 0, pattern
    assert await redis.hlen(keys.batch_custom_ids(batch)) == 0

    status = await in_process(redis_url, "status", batch, "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["succeeded"] == LINES

    plain = await in_process(redis_url, "results", batch, "-o", str(tmp_path / "again.jsonl"))
    assert f"batch {batch} was collected to {out.resolve()}" in refusal(plain)
    assert not (tmp_path / "again.jsonl").exists()
    twice = await in_process(redis_url, "results", batch, "-o", str(out), "--collect")
    assert "already" in refusal(twice)


async def test_collect_with_failed_only_is_refused_before_anything_is_read(
    redis_url: str, tmp_path: Path
) -> None:
    result = await in_process(
        redis_url, "results", "any", "-o", str(tmp_path / "out.jsonl"), "--collect", "--failed-only"
    )

    assert "--failed-only" in refusal(result)
    assert not (tmp_path / "out.jsonl").exists()


async def test_collect_to_another_file_than_the_first_is_refused(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    await submit(redis_url, tmp_path, "elsewhere")
    await redis.hset(
        keys.batch("elsewhere"), mapping={"collected_to": str(tmp_path / "first.jsonl"), "written": 3}
    )

    result = await in_process(
        redis_url, "results", "elsewhere", "-o", str(tmp_path / "second.jsonl"), "--collect"
    )

    assert f"give -o {tmp_path / 'first.jsonl'}" in refusal(result)


async def test_collect_while_another_collector_holds_the_batch_is_refused_naming_it(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    await submit(redis_url, tmp_path, "busy")
    await RedisRunLock(redis, "busy", doing=("collected", "llmqueue results --collect")).acquire()

    result = await in_process(redis_url, "results", "busy", "-o", str(tmp_path / "out.jsonl"), "--collect")

    assert "batch busy is being collected by another `llmqueue results --collect`" in refusal(result)
    assert await redis.hget(keys.batch("busy"), "collected_to") is None


async def test_a_batch_llmqueue_run_writes_is_neither_collected_nor_written_as_missing(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    await submit(redis_url, tmp_path, "ran")
    await redis.hset(keys.batch("ran"), mapping={"written": 5, "written_bytes": 500})  # as a run records it

    collected = await in_process(redis_url, "results", "ran", "-o", str(tmp_path / "out.jsonl"), "--collect")
    plain = await in_process(redis_url, "results", "ran", "-o", str(tmp_path / "out.jsonl"))

    assert "resume that run (`llmqueue run --resume ran`)" in refusal(collected)
    assert "its first 5 result(s) were written to the output of `llmqueue run`" in refusal(plain)
    assert not (tmp_path / "out.jsonl").exists()
