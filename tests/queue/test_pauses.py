"""Pausing a batch or a limit scope, with a real worker, Redis and the simulated provider."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Retry
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.errors import BatchError
from llmqueue.producer import Producer
from llmqueue.queue.pauses import PAUSE_RECHECK, Pauses, pause_of
from llmqueue.queue.ready import ReadyQueue
from llmqueue.queue.store import AttemptStart
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

WAIT_TIMEOUT = 10.0
MAX_JOBS = 2


def chat_file(path: Path, count: int) -> Path:
    lines = [
        {"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"question {n}"}]}
        for n in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


async def held_by(redis: Redis, pause: str) -> set[str]:
    held = await redis.hgetall(keys.spend_held())
    return {job.decode() for job, raw in held.items() if json.loads(raw).get("pause") == pause}


async def until(check: Any, timeout: float = WAIT_TIMEOUT) -> None:
    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def start(*, batch_paused: bool = False, paused: frozenset[str] = frozenset()) -> AttemptStart:
    return AttemptStart(False, [], None, batch_paused=batch_paused, paused_scopes=paused)  # type: ignore[arg-type]


def test_a_job_is_held_by_its_batch_its_model_or_when_every_deployment_it_could_use_is_paused() -> None:
    assert pause_of(start(), "b1", "gpt", ["gpt"]) is None
    assert pause_of(start(batch_paused=True), "b1", "gpt", ["gpt"]) == "batch:b1"
    assert pause_of(start(paused=frozenset({"gpt"})), None, "gpt", ["d1", "d2"]) == "scope:gpt"
    assert pause_of(start(paused=frozenset({"d1"})), None, "gpt", ["d1", "d2"]) is None
    assert pause_of(start(paused=frozenset({"d1", "d2"})), None, "gpt", ["d1", "d2"]) == "scope:d1"


async def test_a_paused_batch_starts_no_call_until_resumed_then_every_job_runs_once(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, latency=0.05)) as provider:
        settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": MAX_JOBS})
        async with Producer(settings) as producer:
            batches = Batches(producer.store, settings)
            await batches.submit_file(chat_file(tmp_path / "in.jsonl", 30), "b1")
            async with running_worker(settings):
                await until(lambda: _at_least(provider, 4))
                await batches.pause("b1")
                at_pause = provider.stats.requests
                assert (await batches.status("b1")).paused

                async def none_taken() -> bool:
                    claimed = await redis.zrange(keys.claimed(settings.worker.queue_name), 0, -1)
                    return not claimed and (await batches.status("b1")).running == 0

                await until(none_taken)  # the jobs taken before the pause have ended
                stopped_at = provider.stats.requests
                # Calls in flight finish; at most one per slot was past its pause check when it came.
                assert stopped_at - at_pause <= MAX_JOBS
                await asyncio.sleep(0.3)  # thirty polls of the worker: nothing more is taken or sent
                assert not await redis.zrange(keys.claimed(settings.worker.queue_name), 0, -1)
                # Its jobs were left in the queue, not taken and held one by one: at most those taken
                # just before the pause were.
                assert len(await held_by(redis, "batch:b1")) <= MAX_JOBS
                status = await batches.status("b1")
                assert provider.stats.requests == stopped_at
                assert not status.done and status.queued == status.total - status.finished > 0
                assert await batches.resume("b1") == status.queued
                final = await asyncio.wait_for(batches.wait("b1", interval=0.02), WAIT_TIMEOUT)
            results = [result async for _, _, result in batches.results("b1")]
    assert (final.succeeded, final.failed, final.paused) == (30, 0, False)
    assert provider.stats.requests == 30  # each job called once
    assert all(r is not None and r.attempts == 1 and not r.errors for r in results)
    assert await held_by(redis, "batch:b1") == set()


async def test_a_paused_scope_holds_an_agent_step_and_a_batch_job_alike(
    redis_url: str, redis: Redis, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url)
    scope = "openai/sim-model"
    async with Producer(settings) as producer:
        batches = Batches(producer.store, settings)
        await batches.pauses.pause_scope(scope)
        await batches.submit_file(chat_file(tmp_path / "in.jsonl", 2), "b1")
        step = await producer.submit({"messages": [{"role": "user", "content": "agent step"}]})
        async with running_worker(settings):

            async def three_held() -> bool:
                return len(await held_by(redis, f"scope:{scope}")) == 3

            await until(three_held)
            assert provider.stats.requests == 0
            assert set(await batches.pauses.paused_scopes()) == {scope}
            assert await batches.pauses.resume_scope(scope) == 3
            answer = await step.result(timeout=WAIT_TIMEOUT)
            final = await asyncio.wait_for(batches.wait("b1", interval=0.02), WAIT_TIMEOUT)
    assert answer.status == "succeeded" and answer.attempts == 1
    assert final.succeeded == 2
    assert provider.stats.requests == 3


async def test_pausing_an_unknown_batch_is_refused(producer: Producer) -> None:
    with pytest.raises(BatchError, match="no batch named"):
        await Batches(producer.store).pause("nope")


async def _at_least(provider: RunningProvider, count: int) -> bool:
    return provider.stats.requests >= count


async def test_a_resume_that_comes_while_a_held_job_is_on_its_way_back_still_wakes_it(
    producer: Producer, redis: Redis
) -> None:
    queue = producer.settings.worker.queue_name
    ready = ReadyQueue(redis, queue, claim_ttl=30)
    pauses = Pauses(redis, queue)
    handle = await producer.submit({"messages": [{"role": "user", "content": "step"}]})
    await pauses.pause_scope("s")
    [claimed] = await ready.claim(1, low_priority_limit=1)
    with pytest.raises(Retry):
        await pauses.hold(claimed.job_id, None, "scope:s", lambda *args, **details: None)

    async def release_later() -> None:  # the worker's release of the held job, after the resume began
        await asyncio.sleep(0.01)
        await ready.release(claimed.job_id, "defer", defer_ms=int(PAUSE_RECHECK * 1000))

    releasing = asyncio.create_task(release_later())
    assert await pauses.resume_scope("s") == 1
    await releasing
    [again] = await ready.claim(1, low_priority_limit=1)  # due now, not in PAUSE_RECHECK seconds
    assert again.job_id == handle.job_id
