"""The ready queue against a real Redis: claim order across priorities and batches, and where a job
goes when its run ends (finished, deferred, put back, or its worker died)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.errors import JobValidationError
from llmqueue.models import Job
from llmqueue.producer import Producer
from llmqueue.queue import payload
from llmqueue.queue.ready import SWEEP_INTERVAL_MS, ReadyQueue, set_weight
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings, WorkerConfig

QUEUE = "llmqueue:queue"


def chat(job_id: str, *, batch: str | None = None, priority: int | str = "default") -> Job:
    return Job(
        id=job_id,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": f"summarise ticket {job_id}"}],
        batch_id=batch,
        priority=priority,
    )


def batch_jobs(batch: str, count: int) -> list[Job]:
    return [chat(f"{batch}:{n:04d}", batch=batch, priority="batch") for n in range(count)]


@pytest.fixture
def store(redis: Redis, settings: Settings) -> JobStore:
    return JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)


@pytest.fixture
def ready(redis: Redis) -> ReadyQueue:
    return ReadyQueue(redis, QUEUE, claim_ttl=20)


async def claim_ids(ready: ReadyQueue, count: int, low: int | None = None) -> list[str]:
    claimed = await ready.claim(count, low_priority_limit=count if low is None else low)
    return [job.job_id for job in claimed]


# ---- order --------------------------------------------------------------------------------------


async def test_higher_priority_jobs_are_claimed_first_whenever_they_were_queued(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("eval", 5))
    await store.enqueue([chat("agent-step", priority="default")])
    await store.enqueue([chat("user-waiting", priority="interactive"), chat("urgent", priority=7)])
    claimed = await ready.claim(10, low_priority_limit=10)
    assert [job.job_id for job in claimed] == [
        "urgent",
        "user-waiting",
        "agent-step",
        *[f"eval:{n:04d}" for n in range(5)],
    ]
    assert [job.priority for job in claimed] == [7, 2, 1, 0, 0, 0, 0, 0]


async def test_two_batches_of_one_priority_take_turns_in_input_order(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("team-a", 300))
    await store.enqueue(batch_jobs("team-b", 300))  # queued after all of team-a's
    first = await claim_ids(ready, 40)
    shares = Counter(job_id.split(":")[0] for job_id in first)
    assert shares == {"team-a": 20, "team-b": 20}
    assert [i for i in first if i.startswith("team-b")] == [f"team-b:{n:04d}" for n in range(20)]


@pytest.mark.parametrize(("weight_a", "weight_b"), [(1.0, 1.0), (3.0, 1.0), (1.0, 2.5)])
async def test_batch_shares_follow_their_weights(
    store: JobStore, ready: ReadyQueue, redis: Redis, weight_a: float, weight_b: float
) -> None:
    async with redis.pipeline() as pipe:
        set_weight(pipe, QUEUE, "team-a", weight_a)
        set_weight(pipe, QUEUE, "team-b", weight_b)
        await pipe.execute()
    await store.enqueue(batch_jobs("team-a", 400))
    await store.enqueue(batch_jobs("team-b", 400))
    taken: list[str] = []
    for _ in range(10):  # in several claims, as workers take them
        taken += await claim_ids(ready, 20)
    shares = Counter(job_id.split(":")[0] for job_id in taken)
    expected_a = 200 * weight_a / (weight_a + weight_b)
    assert abs(shares["team-a"] - expected_a) <= 0.2 * expected_a
    assert abs(shares["team-b"] - (200 - expected_a)) <= 0.2 * (200 - expected_a)


async def test_a_batch_arriving_later_starts_at_once_instead_of_after_the_first(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("first", 500))
    assert len(await claim_ids(ready, 300)) == 300  # the first batch has run for a while
    await store.enqueue(batch_jobs("second", 50))
    nxt = await claim_ids(ready, 10)
    assert Counter(job_id.split(":")[0] for job_id in nxt) == {"first": 5, "second": 5}


async def test_reserved_slots_leave_batch_jobs_queued_but_take_higher_ones(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("eval", 5))
    await store.enqueue([chat("agent-step")])
    assert await claim_ids(ready, 5, low=0) == ["agent-step"]
    assert await claim_ids(ready, 5, low=2) == ["eval:0000", "eval:0001"]


# ---- claims and their end -----------------------------------------------------------------------


async def test_a_claim_sets_arqs_in_progress_key_and_a_job_runs_once(
    store: JobStore, ready: ReadyQueue, redis: Redis
) -> None:
    await store.enqueue([chat("once")])
    (claimed,) = await ready.claim(5, low_priority_limit=5)
    assert claimed.job_id == "once" and claimed.score == int(await redis.zscore(QUEUE, "once"))
    assert 0 < await redis.pttl(keys.arq_in_progress("once")) <= 20_000
    assert await ready.claim(5, low_priority_limit=5) == []
    await ready.release("once", "finish")
    assert await redis.zscore(QUEUE, "once") is None
    assert not await redis.exists(keys.arq_job("once"), keys.arq_in_progress("once"))
    assert await redis.hlen(keys.routes(QUEUE)) == 0


async def test_a_claim_reads_what_arqs_run_job_would_read_in_a_transaction_of_its_own(
    store: JobStore, ready: ReadyQueue, redis: Redis
) -> None:
    await store.enqueue([chat("read"), chat("stopped")])
    await redis.zadd(keys.ARQ_ABORT, {"stopped": 1})
    first = {job.job_id: job for job in await ready.claim(5, low_priority_limit=5)}
    assert first["read"].payload == await redis.get(keys.arq_job("read"))
    assert payload.deserialize_job(first["read"].payload)["a"][0]["id"] == "read"
    assert first["read"].job_try == 1 and not first["read"].aborted
    assert 88_000 < await redis.ttl(keys.arq_retry("read")) <= 88_400  # as arq's run_job sets it
    assert first["stopped"].aborted and await redis.zscore(keys.ARQ_ABORT, "stopped") is None
    await ready.release("read", "back")
    (again,) = await ready.claim(5, low_priority_limit=5)
    assert (again.job_id, again.job_try) == ("read", 2)


async def test_a_claimed_job_whose_payload_expired_says_so(
    store: JobStore, ready: ReadyQueue, redis: Redis
) -> None:
    await store.enqueue([chat("gone")])
    await redis.delete(keys.arq_job("gone"))
    (claimed,) = await ready.claim(5, low_priority_limit=5)
    assert claimed.job_id == "gone" and claimed.payload is None


async def test_a_deferred_job_keeps_its_priority_and_comes_back_when_due(
    store: JobStore, ready: ReadyQueue, redis: Redis
) -> None:
    await store.enqueue([chat("agent-step", priority="interactive")])
    await ready.claim(1, low_priority_limit=1)
    await ready.release("agent-step", "defer", defer_ms=300)
    await store.enqueue(batch_jobs("eval", 3))
    assert await claim_ids(ready, 1) == ["eval:0000"]  # not due yet: lower jobs run meanwhile
    await asyncio.sleep(0.35)
    (back,) = await ready.claim(1, low_priority_limit=1)
    assert (back.job_id, back.priority) == ("agent-step", 2)


async def test_a_deferred_batch_job_keeps_its_place_in_input_order(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("eval", 4))
    assert await claim_ids(ready, 1) == ["eval:0000"]
    await ready.release("eval:0000", "defer", defer_ms=1)
    await asyncio.sleep(0.01)
    assert await claim_ids(ready, 2) == ["eval:0000", "eval:0001"]


async def test_a_job_put_back_by_a_stopping_worker_is_claimed_again_first(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("eval", 3))
    assert await claim_ids(ready, 1) == ["eval:0000"]
    await ready.release("eval:0000", "back")
    assert await claim_ids(ready, 1) == ["eval:0000"]


async def test_a_dead_workers_claim_expires_and_the_sweep_puts_its_job_back(
    store: JobStore, redis: Redis
) -> None:
    dying = ReadyQueue(redis, QUEUE, claim_ttl=0.2)
    await store.enqueue([chat("orphan", priority="interactive")])
    assert await claim_ids(dying, 1) == ["orphan"]
    assert await claim_ids(dying, 1) == []  # claimed: nobody else takes it
    await asyncio.sleep(0.3 + SWEEP_INTERVAL_MS / 1000)  # the claim expired; a sweep is due
    (again,) = await dying.claim(1, low_priority_limit=1)
    assert (again.job_id, again.priority) == ("orphan", 2)


async def test_a_job_removed_from_arqs_queue_is_skipped_and_forgotten(
    store: JobStore, ready: ReadyQueue, redis: Redis
) -> None:
    await store.enqueue([chat("cancelled"), chat("kept")])
    await redis.zrem(QUEUE, "cancelled")  # as Batches.cancel does
    assert await claim_ids(ready, 5) == ["kept"]
    assert await redis.hkeys(keys.routes(QUEUE)) == [b"kept"]


def old_payload(job: dict[str, Any]) -> bytes:
    """An arq payload as llmqueue wrote it before priorities: no priority field."""
    return payload.serialize(
        {"t": None, "f": payload.JOB_FUNCTION, "a": [job], "k": {}, "et": 1_700_000_000_000}
    )


async def test_jobs_queued_without_llmqueue_lanes_are_adopted_with_their_priority(
    ready: ReadyQueue, redis: Redis
) -> None:
    # Queued by an older llmqueue (or by arq itself): only arq's key and sorted set exist.
    old = {"id": "old-job", "messages": [{"role": "user", "content": "hi"}], "batch_id": "legacy"}
    newer = {**old, "id": "newer-job", "priority": 2}
    for job in (old, newer):
        await redis.set(keys.arq_job(job["id"]), old_payload(job))
        await redis.zadd(QUEUE, {job["id"]: 1_700_000_000_000})
    await redis.set(keys.arq_job("garbage"), b"\x80\x04not json")
    await redis.zadd(QUEUE, {"garbage": 1_700_000_000_000})
    claimed = await ready.claim(5, low_priority_limit=5)
    assert [(job.job_id, job.priority) for job in claimed[:1]] == [("newer-job", 2)]
    assert {(job.job_id, job.priority) for job in claimed[1:]} == {("old-job", 1), ("garbage", 1)}


async def test_counts_show_ready_deferred_and_running_per_priority(
    store: JobStore, ready: ReadyQueue
) -> None:
    await store.enqueue(batch_jobs("eval", 4))
    await store.enqueue([chat("agent-1"), chat("agent-2")])
    await store.enqueue([chat("later", priority="interactive")], defer=60)
    await ready.claim(1, low_priority_limit=1)  # agent-1
    counts = {c.priority: (c.ready, c.deferred, c.running) for c in await ready.counts()}
    assert counts == {2: (0, 1, 0), 1: (1, 0, 1), 0: (4, 0, 0)}


# ---- producers and settings ---------------------------------------------------------------------


async def test_producer_submit_is_default_priority_unless_told(producer: Producer, redis: Redis) -> None:
    plain = await producer.submit(
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}
    )
    urgent = await producer.submit(
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "b"}]},
        priority="interactive",
    )
    bulk = await producer.submit_many(
        [{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "c"}]}], priority=0
    )
    stored = [
        Job.parse(payload.job_argument(await redis.get(keys.arq_job(handle.job_id)) or b"")).priority
        for handle in (plain, urgent, *bulk)
    ]
    assert stored == [1, 2, 0]


async def test_producer_rejects_an_unknown_priority_before_queueing(producer: Producer, redis: Redis) -> None:
    with pytest.raises(JobValidationError, match="priority 'asap' is not one of"):
        await producer.submit({"messages": [{"role": "user", "content": "a"}]}, priority="asap")
    assert await redis.zcard(QUEUE) == 0


def test_reserved_slots_must_leave_slots_for_batches() -> None:
    with pytest.raises(ValidationError, match=r"reserved_slots \(4\) must be below max_jobs \(4\)"):
        WorkerConfig(max_jobs=4, reserved_slots=4)
    assert WorkerConfig(max_jobs=200).slots_reserved() == 20
    assert WorkerConfig(max_jobs=5).slots_reserved() == 1
    assert WorkerConfig(max_jobs=1).slots_reserved() == 0
    assert WorkerConfig(max_jobs=8, reserved_slots=0).slots_reserved() == 0
