"""A batch's bookkeeping leaves Redis with its results (``result_ttl``), or at once with ``llmqueue forget``.

``llmqueue run`` with ``--redis-url`` and real worker processes, against a private redis-server whose
every key is scanned afterwards: nothing of the batch may be left.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.simulator.server import RunningProvider
from tests.support.reliability import child_env
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

RESULT_TTL = 3


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def _file(path: Path, count: int) -> Path:
    lines = [
        {"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"q {n}"}]} for n in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def _llmqueue(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command, in a thread: the simulated provider answers in this test's event loop meanwhile."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "llmqueue", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


async def _keys_of(redis: Redis, batch_id: str) -> list[str]:
    """Every key that names the batch or holds a job's data, and the set of batches if it is there."""
    found = [key.decode() async for key in redis.scan_iter(count=1000)]
    per_job = (":result:", ":done:", ":state:", ":errors:", "arq:job:", "arq:in-progress:", "arq:retry:")
    return [
        key
        for key in found
        if batch_id in key or key == "llmqueue:batches" or any(part in key for part in per_job)
    ]


async def test_a_finished_batch_leaves_nothing_in_redis_after_result_ttl(
    own_redis: EmbeddedRedis, provider: RunningProvider, tmp_path: Path
) -> None:
    env = child_env(
        LLM_MODEL="openai/sim-model",
        LLM_BASE_URL=provider.base_url,
        LLM_API_KEY=TEST_API_KEY,
        WORKER_RESULT_TTL=str(RESULT_TTL),
        WORKER_POLL_DELAY="0.01",
    )
    source = _file(tmp_path / "small.jsonl", 20)
    run = await _llmqueue(
        "run", str(source), "--batch", "kept-a-while", "--redis-url", own_redis.url, "--workers", "1",
        "--output", str(tmp_path / "out.jsonl"), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    redis = Redis.from_url(own_redis.url)
    try:
        left = await _keys_of(redis, "kept-a-while")
        assert "llmqueue:batch:kept-a-while" in left and "llmqueue:batches" in left
        ttls = [await redis.ttl(key) for key in left]
        assert all(0 < ttl <= RESULT_TTL for ttl in ttls), dict(zip(left, ttls, strict=True))
        await asyncio.sleep(RESULT_TTL + 1.5)
        assert await _keys_of(redis, "kept-a-while") == []
    finally:
        await redis.aclose()


async def test_forget_removes_a_finished_batch_now_and_refuses_an_unfinished_one(
    own_redis: EmbeddedRedis, provider: RunningProvider, tmp_path: Path
) -> None:
    env = child_env(LLM_MODEL="openai/sim-model", LLM_BASE_URL=provider.base_url, LLM_API_KEY=TEST_API_KEY)
    source = _file(tmp_path / "small.jsonl", 10)
    run = await _llmqueue(
        "run", str(source), "--batch", "done-with", "--redis-url", own_redis.url, "--workers", "1",
        "--output", str(tmp_path / "out.jsonl"), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    queued = await _llmqueue(
        "submit", str(source), "--batch", "not-yet", env={**env, "REDIS_URL": own_redis.url}, cwd=tmp_path
    )
    assert queued.returncode == 0, queued.stdout + queued.stderr
    redis = Redis.from_url(own_redis.url)
    try:
        assert await redis.ttl("llmqueue:batch:done-with") > 0  # it would expire in result_ttl anyway
        refused = await _llmqueue("forget", "not-yet", env={**env, "REDIS_URL": own_redis.url}, cwd=tmp_path)
        assert refused.returncode == 2 and "cancel it first" in " ".join(refused.stderr.split())
        forgotten = await _llmqueue(
            "forget", "done-with", env={**env, "REDIS_URL": own_redis.url}, cwd=tmp_path
        )
        assert forgotten.returncode == 0, forgotten.stdout + forgotten.stderr
        left = [key for key in await _keys_of(redis, "done-with") if "not-yet" not in key]
        assert left == ["llmqueue:batches"]  # listing the other batch
        assert await redis.zrange("llmqueue:batches", 0, -1) == [b"not-yet"]
        status = await _llmqueue("status", "done-with", env={**env, "REDIS_URL": own_redis.url}, cwd=tmp_path)
        assert status.returncode == 2 and "done-with" in status.stderr
    finally:
        await redis.aclose()
