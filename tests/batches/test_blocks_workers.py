"""Windowed ``submit`` end to end: ``llmqueue submit`` and ``llmqueue results`` as processes, two worker
processes feeding the batch's blocks and calling the simulated provider over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import llmqueue_cli, write_jsonl
from tests.support.reliability import worker_env, worker_processes
from tests.support.settings import TEST_API_KEY
from tests.support.varied_text import varied_lines

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

LINES = 2000
"""Ten windows of lines, twenty blocks of half a window: the workers feed the batch block after block."""
WINDOW = 200


async def test_two_workers_run_a_submitted_file_a_window_at_a_time_every_line_once_in_order(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    lines = varied_lines(LINES, model="openai/sim-model")
    for n in range(0, LINES, 3):
        lines[n]["model"] = "openai/sim-model-b"
    for n in range(0, LINES, 13):
        lines[n]["priority"] = "interactive"
    path = write_jsonl(tmp_path / "prompts.jsonl", lines)
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
        (tmp_path / "config.toml").write_text(f"[batch]\nwindow = {WINDOW}\n", encoding="utf-8")
        submitted = llmqueue_cli(["submit", str(path), "--batch", "e2e"], env, tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        assert f"{LINES - WINDOW} held in Redis" in " ".join(submitted.stderr.split())
        assert await redis.zcard("llmqueue:queue") == WINDOW
        assert provider.stats()["requests"] == 0

        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(2)
            most = 0
            began = time.monotonic()
            while True:
                listed = await redis.zcard(keys.batch_jobs("e2e"))
                counts = await redis.hmget(keys.batch("e2e"), ["succeeded", "failed", "cancelled"])
                finished = sum(int(count or 0) for count in counts)
                most = max(most, listed - finished)
                if finished >= LINES:
                    break
                assert time.monotonic() - began < 300, f"{finished} of {LINES} finished"
                await asyncio.sleep(0.02)
        took = time.monotonic() - began
        requests = provider.stats()["requests"]
        out = tmp_path / "out.jsonl"
        results = llmqueue_cli(["results", "e2e", "-o", str(out)], env, tmp_path)
    print(f"\n{LINES} lines, two workers: {took:.1f} s, at most {most} unfinished jobs in Redis")
    assert results.returncode == 0, results.stderr
    assert most <= WINDOW
    assert requests == LINES  # every line called once: none queued twice, none lost
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [record["custom_id"] for record in records] == [f"q{n}" for n in range(LINES)]
    assert all(record["response"]["status_code"] == 200 for record in records)
    assert not await redis.exists(keys.batch_blocks("e2e"))
    assert not await redis.exists(keys.windowed_batches("llmqueue:queue"))
