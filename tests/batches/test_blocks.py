"""Windowed ``submit``: a batch's lines stored in compressed blocks and queued a window at a time, in
process against a real Redis. Jobs are finished through the job store as a worker finishes them;
``BlockFeeder.feed`` is one look of a worker's feeder (tests/batches/test_blocks_workers.py runs real
worker processes)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches import blocks
from llmqueue.batches.block_feeder import BlockFeeder
from llmqueue.batches.control import Batches
from llmqueue.batches.files import job_id_for
from llmqueue.batches.ordered_output import OrderedWriter
from llmqueue.batches.submit import SubmitReport
from llmqueue.errors import BatchError
from llmqueue.models import Job, JobResult, Timings
from llmqueue.producer import Producer
from llmqueue.queue.payload import deserialize_job
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings
from llmqueue.settings.worker import BatchConfig
from llmqueue.simulator.server import RunningProvider
from llmqueue.worker import create_worker
from tests.combinations.runs import write_jsonl
from tests.support.varied_text import varied_lines

QUEUE = "llmqueue:test-blocks"
BATCH = "blk"
WINDOW = 200


def with_window(settings: Settings, window: int = WINDOW) -> Settings:
    return settings.model_copy(update={"batch": BatchConfig(window=window)})


def batches_for(redis: Redis, settings: Settings) -> Batches:
    return Batches(JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600), with_window(settings))


@pytest.fixture
def batches(redis: Redis, settings: Settings) -> Batches:
    return batches_for(redis, settings)


def answer(job_id: str) -> JobResult:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    return JobResult(
        job_id=job_id,
        batch_id=BATCH,
        status="succeeded",
        response=body,
        attempts=1,
        timings=Timings(queued_at=datetime.now(UTC)),
    )


async def unfinished(batches: Batches) -> int:
    """The batch's listed jobs without a result: what its window bounds."""
    listed = await batches.redis.zcard(keys.batch_jobs(BATCH))
    return listed - (await batches.status(BATCH)).finished


async def finish_all(batches: Batches) -> int:
    """Finish every listed job still unfinished, as a worker would; how many. Jobs are queued in line
    order, a block at a time, and every earlier one is finished: the unfinished are among the last."""
    last = await batches.redis.zrange(keys.batch_jobs(BATCH), -(await unfinished(batches) + 1000), -1)
    job_ids = [raw.decode() for raw in last]
    found = await batches.store.get_results(job_ids)
    waiting = [job_id for job_id, result in zip(job_ids, found, strict=True) if result is None]
    for job_id in waiting:
        assert await batches.store.finish(answer(job_id), release=True)
    return len(waiting)


async def stored_bytes(redis: Redis) -> int:
    fields = await redis.hkeys(keys.batch_blocks(BATCH))
    return sum([await redis.hstrlen(keys.batch_blocks(BATCH), field) for field in fields])


async def test_a_file_is_stored_compressed_and_queued_a_window_at_a_time_with_each_lines_settings(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    lines = varied_lines(5000, model="openai/sim-model")
    for n in range(0, 5000, 7):
        lines[n]["model"] = "openai/other-model"
    for n in range(0, 5000, 11):
        lines[n]["priority"] = 7
    path = write_jsonl(tmp_path / "in.jsonl", lines)

    report = await batches.submit_file(path, BATCH, priority=2)

    size = path.stat().st_size
    held = await stored_bytes(redis)
    print(
        f"\n5,000 varied lines, {size / 5000:.0f} bytes a line: {held / size:.3f} of the file in Redis blocks"
    )
    assert held < 0.35 * size
    assert (report.submitted, report.held) == (WINDOW, 5000 - WINDOW)
    assert await redis.zcard(QUEUE) == WINDOW
    assert (await batches.status(BATCH)).total == 5000
    routes = await redis.hgetall(keys.routes(QUEUE))
    priority = {raw.decode(): int(route.split(b"\t")[0]) for raw, route in routes.items()}
    assert priority[job_id_for(BATCH, 1)] == 7 and priority[job_id_for(BATCH, 2)] == 2
    first = deserialize_job(await redis.get(keys.arq_job(job_id_for(BATCH, 8))) or b"{}")
    assert "openai/other-model" in json.dumps(first)

    feeder = BlockFeeder(batches, owner="test-worker")
    most = WINDOW
    while (status := await batches.status(BATCH)).finished < 5000:
        assert await finish_all(batches) > 0
        await feeder.feed()
        most = max(most, await unfinished(batches))
    assert most <= WINDOW
    assert status.done and status.total == status.succeeded == 5000
    assert await redis.zcard(keys.batch_jobs(BATCH)) == 5000
    assert not await redis.exists(keys.batch_blocks(BATCH))
    assert not await redis.sismember(keys.windowed_batches(QUEUE), BATCH)


async def test_two_feeders_at_once_queue_every_line_once(
    batches: Batches, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", varied_lines(2000))
    await batches.submit_file(path, BATCH)
    other = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        feeders = [BlockFeeder(batches, owner="w1"), BlockFeeder(batches_for(other, settings), owner="w2")]
        queued = WINDOW
        while (await batches.status(BATCH)).finished < 2000:
            await finish_all(batches)
            fed = await asyncio.gather(*(feeder.feed() for feeder in feeders))
            queued += sum(fed)
            assert await unfinished(batches) <= WINDOW
    finally:
        await other.aclose()
    assert queued == 2000  # each job queued by exactly one of them
    assert (await batches.status(BATCH)).succeeded == 2000


async def test_a_process_that_died_mid_block_leaves_the_rest_to_the_next_and_nothing_twice(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", varied_lines(600))
    await batches.submit_file(path, BATCH)  # blocks 0 and 1 (lines 1-200) queued
    await finish_all(batches)
    # A worker took the lease, queued 40 of block 2's 100 lines and died: its lease expires.
    state = await redis.hmget(keys.batch(BATCH), ["fed_blocks", "block_lines"])
    assert (int(state[0]), int(state[1])) == (2, 100)
    block = await redis.hget(keys.batch_blocks(BATCH), "2")
    assert block is not None
    options = blocks.BlockOptions(None, None, 0, True)
    jobs = [item for item in blocks.block_items(BATCH, block, 201, options, None) if isinstance(item, Job)]
    await redis.set(keys.batch_block_lease(BATCH), "dead-worker", px=30_000)
    partial = SubmitReport(batch_id=BATCH, submitted=0, already_known=0, rejected=[])
    await batches.feed_chunk(BATCH, jobs[:40], partial, None)
    assert partial.submitted == 40 and await redis.zcard(QUEUE) == 40
    assert await BlockFeeder(batches, owner="other").feed() == 0  # the lease holds while it lives
    await redis.delete(keys.batch_block_lease(BATCH))  # it expires

    fed = await BlockFeeder(batches, owner="next").feed()

    assert fed == 60 + 100  # the rest of block 2, then block 3 (the window has room for 200)
    assert await redis.zcard(keys.batch_jobs(BATCH)) == 400
    assert await redis.hget(keys.batch(BATCH), "fed_blocks") == b"4"
    while (await batches.status(BATCH)).finished < 600:
        await finish_all(batches)
        await BlockFeeder(batches, owner="next").feed()
    assert (await batches.status(BATCH)).succeeded == 600


async def test_a_submission_cut_short_is_completed_by_submitting_again_and_a_changed_file_refused(
    batches: Batches, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = varied_lines(5000)
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    writes = 0
    real_write = blocks._write_blocks

    async def dies_after_two(*args: object) -> None:
        nonlocal writes
        writes += 1
        if writes > 2:
            raise ConnectionError("submit killed")
        await real_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(blocks, "_write_blocks", dies_after_two)
    with pytest.raises(ConnectionError):
        await batches.submit_file(path, BATCH)
    monkeypatch.setattr(blocks, "_write_blocks", real_write)
    assert await redis.hlen(keys.batch_blocks(BATCH)) == 32  # two writes of 16 blocks
    assert await redis.zcard(QUEUE) == 0  # nothing queued before every block is stored

    edited = [dict(line) for line in lines]
    edited[2500]["messages"] = [{"role": "user", "content": "EDITED"}]
    with pytest.raises(BatchError, match="holds other lines 2501-2600"):
        await batches.submit_file(write_jsonl(tmp_path / "edited.jsonl", edited), BATCH)
    assert await redis.zcard(QUEUE) == 0

    report = await batches.submit_file(path, BATCH)
    assert (report.submitted, report.held) == (WINDOW, 5000 - WINDOW)
    await finish_all(batches)
    again = await batches.submit_file(path, BATCH)  # a second resume queues the next blocks only
    assert (again.submitted, again.already_known) == (WINDOW, WINDOW)
    while (await batches.status(BATCH)).finished < 5000:
        await finish_all(batches)
        await BlockFeeder(batches, owner="w").feed()
    status = await batches.status(BATCH)
    assert status.total == status.succeeded == 5000 and await redis.zcard(keys.batch_jobs(BATCH)) == 5000


async def test_submitting_a_collected_batch_again_queues_nothing_of_what_was_written(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", varied_lines(300))
    await batches.submit_file(path, BATCH)
    while (await batches.status(BATCH)).finished < 300:
        await finish_all(batches)
        await BlockFeeder(batches, owner="w").feed()
    writer = OrderedWriter(batches.store, BATCH, tmp_path / "out.jsonl")  # what results --collect does
    await writer.open()
    assert await writer.drain(final=True) == 300
    writer.close(complete=True)
    assert not [key async for key in redis.scan_iter(match=keys.result(f"{BATCH}:*"))]

    again = await batches.submit_file(path, BATCH)

    assert again.submitted == 0
    assert await redis.zcard(QUEUE) == 0  # no line sent to the provider twice
    status = await batches.status(BATCH)
    assert status.total == status.succeeded == 300


async def test_cancel_drops_the_lines_not_queued_and_forget_leaves_no_block(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", varied_lines(1000))
    await batches.submit_file(path, BATCH)
    await finish_all(batches)
    await BlockFeeder(batches, owner="w").feed()  # 200 done, 200 queued, 600 in blocks

    cancelled = await batches.cancel(BATCH)

    status = await batches.status(BATCH)
    assert cancelled == 200
    assert (status.total, status.succeeded, status.cancelled, status.queued) == (400, 200, 200, 0)
    assert status.done
    assert not await redis.exists(keys.batch_blocks(BATCH))
    assert not await redis.sismember(keys.windowed_batches(QUEUE), BATCH)
    assert await BlockFeeder(batches, owner="w").feed() == 0
    await batches.forget(BATCH)
    assert not [key async for key in redis.scan_iter(match=f"llmqueue:batch:{BATCH}*")]


async def test_skip_invalid_reports_the_bad_lines_and_counts_only_the_good_ones(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    lines: list[object] = list(varied_lines(500))
    bad = {3, 250, 499}
    for line in bad:
        lines[line - 1] = "{not json"
    lines[299] = dict(lines[0])  # type: ignore[call-overload]  # line 300 repeats line 1's custom id
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8"
    )

    report = await batches.submit_file(path, BATCH, skip_invalid=True)

    assert sorted(error.line for error in report.rejected) == [3, 250, 300, 499]
    assert (await batches.status(BATCH)).total == 496
    while (await batches.status(BATCH)).finished < 496:
        await finish_all(batches)
        await BlockFeeder(batches, owner="w").feed()
    status = await batches.status(BATCH)
    assert status.done and status.succeeded == 496
    assert await redis.zmscore(keys.batch_jobs(BATCH), [job_id_for(BATCH, n) for n in (3, 300)]) == [
        None,
        None,
    ]


async def test_a_line_the_workers_refuse_as_it_is_queued_ends_failed_saying_why(
    batches: Batches, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    lines = varied_lines(400)
    lines[350]["house_hint"] = "short"
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    # The submitter's settings let jobs set a parameter the workers' do not: its line passes the check.
    lenient = settings.model_copy(
        update={"llm": settings.llm.model_copy(update={"allowed_params": ["house_hint"]})}
    )
    await batches_for(redis, lenient).submit_file(path, BATCH)
    feeder = BlockFeeder(batches, owner="strict-worker")
    while (await batches.status(BATCH)).finished < 400:
        await finish_all(batches)
        await feeder.feed()

    status = await batches.status(BATCH)
    assert (status.total, status.succeeded, status.failed) == (400, 399, 1)
    refused = (await batches.store.get_results([job_id_for(BATCH, 351)]))[0]
    assert refused is not None and refused.status == "failed" and refused.error is not None
    assert "house_hint" in refused.error.message and refused.error.kind == "invalid_job"
    listed = [job_id async for job_id, _, _ in batches.results(BATCH)]
    assert listed == [job_id_for(BATCH, n) for n in range(1, 401)]


async def test_a_burst_worker_ends_only_once_every_block_is_queued_and_run(
    settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    windowed = with_window(settings)
    path = write_jsonl(tmp_path / "in.jsonl", varied_lines(600, model="openai/sim-model"))
    async with Producer(windowed) as producer:
        batches = Batches(producer.store, windowed)
        await batches.submit_file(path, BATCH)
        await finish_all(batches)  # the first window is done: the queue is empty, 400 lines in blocks
        assert await producer.redis.zcard(windowed.worker.queue_name) == 0
        # A process that died while queueing the next block holds its lease for two more seconds.
        await producer.redis.set(keys.batch_block_lease(BATCH), "dead-worker", px=2000)

        await asyncio.wait_for(create_worker(windowed, burst=True, handle_signals=False).main(), 120)

        status = await batches.status(BATCH)
    assert status.done and status.succeeded == 600
    assert provider.stats.requests == 400
