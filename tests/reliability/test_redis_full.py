"""Redis out of memory (``maxmemory`` reached, ``noeviction``): one line for the user, a submission that
keeps the blocks it stored and is completed by submitting again, and no paid result lost.

The session's private Redis is made full with ``CONFIG SET maxmemory``, restored after each test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.answered import heard_before
from tests.support.reliability import (
    chat_jobs,
    wait_for_results,
    wait_until,
    worker_env,
    worker_processes,
)
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

MODEL = "openai/sim-model"


@pytest.fixture
async def full_redis(redis: Redis) -> AsyncIterator[Redis]:
    """The test's Redis, whose maxmemory the test may lower; set back to unlimited afterwards."""
    await redis.config_set("maxmemory-policy", "noeviction")
    try:
        yield redis
    finally:
        await redis.config_set("maxmemory", 0)


async def _memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def test_a_submission_redis_cannot_hold_says_one_line_counts_what_it_queued_and_resumes(
    full_redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    lines = 2000
    batch = tmp_path / "big.jsonl"
    # Prompts of random text (~2.6 kB per line): their blocks compress to about three quarters.
    batch.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"r{n}",
                    "model": MODEL,
                    "messages": [
                        {"role": "user", "content": f"{n} {base64.b64encode(os.urandom(1950)).decode()}"}
                    ],
                }
            )
            + "\n"
            for n in range(lines)
        ),
        encoding="utf-8",
    )
    # Room for a part of the file's ~4 MB of blocks (with what a transaction holds in transit).
    await full_redis.config_set("maxmemory", await _memory(full_redis) + 3_000_000)
    env = worker_env(redis_url, "http://127.0.0.1:9/v1", TEST_API_KEY)
    command = [sys.executable, "-m", "llmqueue", "submit", str(batch), "--batch", "big"]
    full = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    said = " ".join(full.stderr.split())
    queued = await full_redis.zcard("llmqueue:queue")
    stored = await full_redis.hlen(keys.batch_blocks("big"))
    blocks = -(-lines // int(await full_redis.hget(keys.batch("big"), "block_lines") or 1))
    print(
        f"\nsubmit into a full Redis: exit {full.returncode}, {len(full.stderr)} chars on stderr, "
        f"{stored} of {blocks} blocks stored, {queued} queued: {said[:300]!r}"
    )
    assert full.returncode == 2
    assert len(full.stderr) < 2000 and "Traceback" not in full.stderr
    assert "OutOfMemoryError" in said or "OOM" in said
    assert said.index("batch big") < said.index("Redis error")  # the id came first
    assert f"llmqueue submit {batch} --batch big" in said
    assert 0 < stored < blocks
    assert queued == 0  # nothing runs before the whole file is stored

    await full_redis.config_set("maxmemory", 0)
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    window = int(await full_redis.hget(keys.batch("big"), "window") or 0)
    assert (
        await full_redis.zcard("llmqueue:queue") == window == await full_redis.zcard(keys.batch_jobs("big"))
    )
    assert await full_redis.hlen(keys.batch_blocks("big")) == blocks - window // (window // 2)
    assert int(await full_redis.hget(keys.batch("big"), "total") or 0) == lines


async def test_results_paid_for_while_redis_refuses_writes_are_kept_and_stored_once(
    full_redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    jobs = 8
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=2.0)) as provider:
        # A limit that never binds, on a scope that has heard from its provider before: a new scope sends
        # two probing calls at first, not eight.
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY, llm_rpm=60_000)
        with worker_processes(env, tmp_path) as workers:
            (worker,) = await workers.start_ready(1)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                await heard_before(producer.redis, MODEL)
                handles = await producer.submit_many(chat_jobs(jobs, "paid"))
                await wait_until(lambda: provider.stats()["in_flight"] == jobs, 30, "all calls in flight")
                # Redis fills up while the provider answers: no write fits any more.
                await full_redis.config_set("maxmemory", 1)
                await asyncio.sleep(6)
                during = provider.stats()
                stored_during = sum([await full_redis.exists(keys.result(h.job_id)) for h in handles])
                await full_redis.config_set("maxmemory", 0)
                began = time.monotonic()
                results = await wait_for_results(full_redis, [h.job_id for h in handles], 60)
                took = time.monotonic() - began
            assert worker.alive
        after = provider.stats()
    print(
        f"\nRedis full while {jobs} calls were in flight: {during['succeeded']} answers paid, "
        f"{stored_during} stored while full; all stored {took:.1f} s after Redis had room again; "
        f"provider calls in all {after['requests']}"
    )
    assert during["succeeded"] == jobs and stored_during == 0
    assert all(r.ok and r.attempts == 1 for r in results.values())
    assert after["requests"] == jobs  # nothing paid twice
    assert "Redis refuses to store a paid result" in worker.stderr()


async def test_an_idle_worker_facing_a_full_redis_says_so_once_and_takes_jobs_when_it_has_room(
    full_redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY, llm_rpm=60_000)
        with worker_processes(env, tmp_path) as workers:
            (worker,) = await workers.start_ready(1)
            await full_redis.config_set("maxmemory", 1)
            await asyncio.sleep(8)  # a poll every 10 ms before: now a backoff, said once
            during = worker.stderr()
            await full_redis.config_set("maxmemory", 0)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                handles = await producer.submit_many(chat_jobs(4, "after"))
                results = await wait_for_results(full_redis, [h.job_id for h in handles], 60)
            assert worker.alive
        after = worker.stderr()
    refusals = [line for line in during.splitlines() if "refuses writes" in line]
    print(f"\nidle worker, Redis full for 8 s: {len(refusals)} line(s): {refusals[:1]!r}")
    assert len(refusals) == 1 and "taking no job" in refusals[0]
    assert "answers again" in after
    assert all(r.ok for r in results.values())
