"""The set an autoscaler counts (``keys.ready``): exactly the jobs waiting for a worker's slot, through
every move a job makes: queued, claimed, deferred, put back, cancelled, its worker dead, finished, its
batch paused and resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.models import Job
from llmqueue.queue.cancel import cancel_queued
from llmqueue.queue.pauses import Pauses
from llmqueue.queue.ready import SWEEP_INTERVAL_MS, ReadyQueue
from llmqueue.queue.store import JobStore

QUEUE = "llmqueue:queue"


def chat(job_id: str, *, batch: str | None = None, priority: int | str = "default") -> Job:
    return Job(
        id=job_id,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": f"summarise ticket {job_id}"}],
        batch_id=batch,
        priority=priority,
    )


async def lane_members(redis: Redis, paused: Collection[str]) -> set[str]:
    """The true ready jobs: every id in every lane of every priority, but the ``paused`` batches'."""
    found: set[str] = set()
    async for key in redis.scan_iter(match=keys.ready_prefix(QUEUE) + "lane:*"):
        if key.decode().rpartition(":")[2] not in paused:
            found |= {member.decode() for member in await redis.zrange(key, 0, -1)}
    return found


async def assert_counted(redis: Redis, expected: int, paused: Collection[str] = ()) -> None:
    members = {member.decode() for member in await redis.smembers(keys.ready(QUEUE))}
    assert members == await lane_members(redis, paused)
    assert await redis.scard(keys.ready(QUEUE)) == expected


async def test_the_ready_set_counts_queued_jobs_and_not_deferred_ones(redis: Redis) -> None:
    store = JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)
    await store.enqueue([chat(f"eval:{n}", batch="eval", priority="batch") for n in range(5)])
    await store.enqueue([chat("agent")])
    await store.enqueue([chat("later")], defer=60)
    await store.enqueue([chat("agent")])  # already queued: not counted twice
    await assert_counted(redis, 6)


async def test_a_claim_takes_jobs_out_of_the_count_and_a_release_puts_back_only_due_ones(
    redis: Redis,
) -> None:
    store = JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)
    ready = ReadyQueue(redis, QUEUE, claim_ttl=20)
    await store.enqueue([chat(f"eval:{n}", batch="eval", priority="batch") for n in range(5)])
    claimed = [job.job_id for job in await ready.claim(3, low_priority_limit=3)]
    await assert_counted(redis, 2)  # running jobs are not waiting for a slot
    await ready.release(claimed[0], "back")  # a stopping worker's job: ready again
    await assert_counted(redis, 3)
    await ready.release(claimed[1], "defer", defer_ms=150)  # a retry delay, or the limiter's
    await assert_counted(redis, 3)
    await ready.release(claimed[2], "finish")
    await assert_counted(redis, 3)
    await asyncio.sleep(0.2)
    await ready.claim(1, low_priority_limit=1)  # the due deferred job is promoted, then one is claimed
    await assert_counted(redis, 3)


async def test_cancelled_jobs_leave_the_count(redis: Redis) -> None:
    store = JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)
    await store.enqueue([chat(f"eval:{n}", batch="eval", priority="batch") for n in range(4)])
    await store.enqueue([chat("later")], defer=60)
    cancelled = await cancel_queued(store, ["eval:0", "eval:1", "later"], reason="the batch was cancelled")
    assert sorted(cancelled) == ["eval:0", "eval:1", "later"]
    await assert_counted(redis, 2)


async def test_a_dead_workers_job_is_counted_again_when_the_sweep_puts_it_back(redis: Redis) -> None:
    store = JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)
    dying = ReadyQueue(redis, QUEUE, claim_ttl=0.2)
    await store.enqueue([chat("orphan"), chat("other")])
    await dying.claim(2, low_priority_limit=2)
    await assert_counted(redis, 0)
    await asyncio.sleep(0.3 + SWEEP_INTERVAL_MS / 1000)
    await dying.claim(0 + 1, low_priority_limit=0)  # sweeps both back, claims one
    await assert_counted(redis, 1)


async def test_a_batch_run_to_the_end_leaves_the_count_at_zero(redis: Redis) -> None:
    store = JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)
    ready = ReadyQueue(redis, QUEUE, claim_ttl=20)
    await store.enqueue([chat(f"eval:{n}", batch="eval", priority="batch") for n in range(50)])
    await redis.zrem(QUEUE, "eval:7")  # removed from arq's queue meanwhile: skipped by the claim
    rounds = 0
    while claimed := await ready.claim(8, low_priority_limit=8):
        await asyncio.gather(*(ready.release(job.job_id, "finish") for job in claimed))
        rounds += 1
        await assert_counted(redis, max(0, 49 - 8 * rounds))
    await assert_counted(redis, 0)


async def test_a_paused_batchs_jobs_leave_the_count_and_come_back_on_resume(redis: Redis) -> None:
    store = JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600)
    ready = ReadyQueue(redis, QUEUE, claim_ttl=20)
    pauses = Pauses(redis, QUEUE)
    await store.enqueue([chat(f"eval:{n}", batch="eval", priority="batch") for n in range(5)])
    await store.enqueue([chat(f"other:{n}", batch="other", priority="batch") for n in range(2)])
    await store.enqueue([chat("agent")])
    await assert_counted(redis, 8)

    await pauses.pause_batch("eval")  # no worker would take them: an autoscaler adds none for them
    await assert_counted(redis, 3, paused={"eval"})
    await store.enqueue([chat("eval:late", batch="eval", priority="batch")])  # fed while paused
    await assert_counted(redis, 3, paused={"eval"})
    claimed = {job.job_id for job in await ready.claim(10, low_priority_limit=10)}
    assert claimed == {"other:0", "other:1", "agent"}
    await assert_counted(redis, 0, paused={"eval"})

    await pauses.resume_batch("eval")
    await assert_counted(redis, 6)
    claimed = {job.job_id for job in await ready.claim(10, low_priority_limit=10)}
    assert claimed == {*(f"eval:{n}" for n in range(5)), "eval:late"}
    await assert_counted(redis, 0)
