"""Windowed submission and the in-order output, in process against a real Redis: jobs are finished
through the job store as a worker finishes them, so what is checked is what Redis holds."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches import window as window_module
from llmqueue.batches.control import Batches
from llmqueue.batches.files import iter_jobs, job_id_for
from llmqueue.batches.ordered_output import OrderedWriter
from llmqueue.batches.window import WINDOW_CEILING, WINDOW_FLOOR, WindowFeeder, count_requests, window_size
from llmqueue.errors import BatchFileError, LLMQueueError
from llmqueue.models import JobResult, Timings
from llmqueue.queue.store import JobStore

QUEUE = "llmqueue:test-window"
BATCH = "win"


def make_file(path: Path, count: int, *, bad: tuple[int, ...] = ()) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for n in range(1, count + 1):
            if n in bad:
                out.write("{not json\n")
                continue
            line = {"custom_id": f"c{n}", "messages": [{"role": "user", "content": f"question {n}"}]}
            out.write(json.dumps(line) + "\n")
        out.write("\n")  # a blank line is no request
    return path


def answer(line: int, status: str = "succeeded") -> JobResult:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {line}"}}]}
    return JobResult(
        job_id=job_id_for(BATCH, line),
        batch_id=BATCH,
        status=status,  # type: ignore[arg-type]
        response=body if status == "succeeded" else None,
        attempts=1,
        timings=Timings(queued_at=datetime.now(UTC)),
    )


async def queued_jobs(redis: Redis) -> int:
    """Jobs materialised in Redis: arq job keys."""
    return len([key async for key in redis.scan_iter(match=keys.arq_job("*"), count=1000)])


@pytest.fixture
def batches(redis: Redis) -> Batches:
    return Batches(JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600))


async def prepare(batches: Batches, source: Path) -> dict[str, Any]:
    """Create the batch of ``source`` as a run does (its file not checked here); ``iter_jobs`` options."""
    return await batches.prepare_submission(
        source,
        BATCH,
        default_model="openai/sim",
        llm_config=None,
        skip_invalid=True,
        max_cost=None,
        max_tokens=None,
        priority=0,
        weight=1.0,
        on_queueing=None,
    )


async def start_feeder(batches: Batches, source: Path, window: int, *, counted: bool = True) -> WindowFeeder:
    """A started feeder of ``source``, told the file's count (``counted``) or left to count it."""
    options = await prepare(batches, source)
    feeder = WindowFeeder(
        batches, BATCH, source, iter_jobs(source, **options), window=window, cache=False, answered_from=None
    )
    await feeder.start(count_requests(source) if counted else None)
    if not counted:
        feeder.count_total()
    return feeder


async def finish(batches: Batches, lines: list[int], status: str = "succeeded") -> None:
    for line in lines:
        assert await batches.store.finish(answer(line, status), release=True)


def test_window_size_follows_the_rate_and_the_slots_within_its_bounds() -> None:
    assert window_size(rpm=6000, slots=5000) == 2000  # 100/s for 10 s each, twice
    assert window_size(rpm=6000, slots=400) == 800  # the slots bound it first
    assert window_size(rpm=None, slots=400) == 800
    assert window_size(rpm=60, slots=400) == WINDOW_FLOOR
    assert window_size(rpm=10_000_000, slots=1_000_000) == WINDOW_CEILING
    assert window_size(rpm=None, slots=400, override=7) == 7


def test_count_requests_counts_non_blank_lines(tmp_path: Path) -> None:
    assert count_requests(make_file(tmp_path / "f.jsonl", 12, bad=(3,))) == 12


async def test_feeder_keeps_at_most_the_window_unfinished_and_the_true_total(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    source = make_file(tmp_path / "f.jsonl", 50)
    feeder = await start_feeder(batches, source, window=8)
    assert await redis.zcard(keys.batch_jobs(BATCH)) == 8
    assert await queued_jobs(redis) == 8
    assert (await batches.status(BATCH)).total == 50
    assert (await batches.status(BATCH)).queued == 50

    await finish(batches, [1, 2, 3])
    assert await feeder.top_up() == 3
    assert await redis.zcard(keys.batch_jobs(BATCH)) == 11
    assert await queued_jobs(redis) == 8
    # Unwritten results count against twice the window: with 8 finished and none written, the
    # feeder stops at 16 listed jobs whatever finishes.
    await finish(batches, list(range(4, 12)))
    await feeder.top_up()
    assert await redis.zcard(keys.batch_jobs(BATCH)) == 16
    assert not feeder.exhausted


async def test_writer_writes_the_in_order_prefix_and_drops_written_jobs_keys(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    source = make_file(tmp_path / "f.jsonl", 6)
    await start_feeder(batches, source, window=10)
    output = tmp_path / "out.jsonl"
    writer = OrderedWriter(batches.store, BATCH, output)
    await writer.open()

    await finish(batches, [2, 3])  # out of order: line 1 is not done
    assert await writer.drain() == 0
    assert await redis.exists(keys.result(job_id_for(BATCH, 2)))
    await finish(batches, [1])
    assert await writer.drain() == 3
    assert [json.loads(line)["custom_id"] for line in writer.partial.read_text().splitlines()] == [
        "c1",
        "c2",
        "c3",
    ]
    for line in (1, 2, 3):
        assert not await redis.exists(
            keys.result(job_id_for(BATCH, line)), keys.state(job_id_for(BATCH, line))
        )
    assert await redis.hget(keys.batch_custom_ids(BATCH), job_id_for(BATCH, 1)) is None
    assert await redis.hget(keys.batch_fingerprints(BATCH), job_id_for(BATCH, 1)) is not None
    assert await batches.lost_jobs(BATCH) == []  # the written ones are not taken for lost

    await finish(batches, [6, 5, 4], status="failed")
    assert await writer.drain(final=True) == 3
    writer.close(complete=True)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["custom_id"] for r in records] == [f"c{n}" for n in range(1, 7)]
    assert [r["llmqueue"]["status"] for r in records] == ["succeeded"] * 3 + ["failed"] * 3
    assert writer.failure_count == 3
    assert not writer.partial.exists()


async def test_a_resumed_feed_queues_nothing_twice_and_the_writer_cuts_back_to_what_it_recorded(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    source = make_file(tmp_path / "f.jsonl", 30, bad=(7,))
    feeder = await start_feeder(batches, source, window=5)
    output = tmp_path / "out.jsonl"
    writer = OrderedWriter(batches.store, BATCH, output)
    await writer.open()
    await finish(batches, [1, 2, 3, 4, 5])
    await writer.drain()
    await feeder.top_up()
    writer.close(complete=False)
    with writer.partial.open("a", encoding="utf-8") as partial:
        partial.write('{"half a line written after the last record')  # killed mid-write
    listed_before = await redis.zrange(keys.batch_jobs(BATCH), 0, -1)

    # A killed run started again: the same file fed from its first line.
    again = await start_feeder(batches, source, window=5)
    assert await redis.zrange(keys.batch_jobs(BATCH), 0, -1) == listed_before
    assert again.report.submitted == 0
    writer = OrderedWriter(batches.store, BATCH, output)
    await writer.open()
    finished = {1, 2, 3, 4, 5}
    while not again.exhausted or len(finished) < 29:
        members = await redis.zrange(keys.batch_jobs(BATCH), 0, -1)
        fed = {int(member.decode().rsplit(":", 1)[1]) for member in members}
        await finish(batches, sorted(fed - finished))
        finished |= fed
        await writer.drain()
        await again.top_up()
    status = await batches.status(BATCH)
    assert status.total == 29 and status.succeeded == 29  # line 7 rejected, each line finished once
    assert (again.report.already_known, again.report.submitted) == (
        len(listed_before),
        29 - len(listed_before),
    )
    assert [error.line for error in again.report.rejected] == [7]
    await writer.drain(final=True)
    writer.close(complete=True)
    ids = [json.loads(line)["custom_id"] for line in output.read_text().splitlines()]
    assert ids == [f"c{n}" for n in range(1, 31) if n != 7]


async def test_a_writer_whose_partial_file_is_gone_refuses_to_go_on(batches: Batches, tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.jsonl", 3)
    await start_feeder(batches, source, window=5)
    writer = OrderedWriter(batches.store, BATCH, tmp_path / "out.jsonl")
    await writer.open()
    await finish(batches, [1])
    await writer.drain()
    writer.close(complete=False)
    writer.partial.unlink()
    with pytest.raises(LLMQueueError, match="gone or shorter"):
        await OrderedWriter(batches.store, BATCH, tmp_path / "out.jsonl").open()


async def test_a_file_of_bad_lines_only_leaves_no_batch(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    source = make_file(tmp_path / "f.jsonl", 3, bad=(1, 2, 3))
    with pytest.raises(BatchFileError, match="none of its 3 request line"):
        await start_feeder(batches, source, window=5)
    assert not await redis.exists(keys.batch(BATCH), keys.batch_jobs(BATCH))
    assert await queued_jobs(redis) == 0


async def test_a_snapshot_writes_the_whole_output_and_keeps_cancelled_jobs_for_a_resume(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    source = make_file(tmp_path / "f.jsonl", 4)
    await start_feeder(batches, source, window=10)
    output = tmp_path / "out.jsonl"
    writer = OrderedWriter(batches.store, BATCH, output)
    await writer.open()
    await finish(batches, [1, 3])
    await finish(batches, [2, 4], status="cancelled")  # a spent budget ended them unsent
    assert await writer.drain() == 1  # a cancelled job is held: a resumed run may send it again
    await writer.snapshot()
    writer.close(complete=False)

    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["llmqueue"]["status"] for r in records] == ["succeeded", "cancelled", "succeeded", "cancelled"]
    assert len(writer.partial.read_text().splitlines()) == 1
    assert await redis.hget(keys.batch(BATCH), "written") == b"1"
    assert await redis.exists(keys.result(job_id_for(BATCH, 2)), keys.result(job_id_for(BATCH, 4))) == 2


async def test_a_feeder_that_counts_its_file_feeds_its_first_window_before_the_count_ends(
    batches: Batches, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_file(tmp_path / "f.jsonl", 50, bad=(7,))
    counted = threading.Event()
    counting_may_end = threading.Event()

    def count_when_allowed(path: Path) -> int:
        counting_may_end.wait(timeout=60)
        counted.set()
        return count_requests(path)

    monkeypatch.setattr(window_module, "count_requests", count_when_allowed)
    feeder = await start_feeder(batches, source, window=8, counted=False)
    # Fed while the file is still being counted: the total is not known yet, and the batch not done.
    assert await redis.zcard(keys.batch_jobs(BATCH)) == 8 and not feeder.exhausted
    status = await batches.status(BATCH)
    assert (status.total, status.done) == (0, False)

    counting_may_end.set()
    deadline = time.monotonic() + 60
    while (await batches.status(BATCH)).total == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert counted.is_set()
    assert (await batches.status(BATCH)).total == 50  # its lines (the bad one too, until it is read)
