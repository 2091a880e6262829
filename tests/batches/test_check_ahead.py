"""A big file checked while its first lines run: the check in its thread, and the feeding that never
passes what the check has passed (in process, against a real Redis)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.check_ahead import HEAD_LINES, CheckAhead, checks_ahead
from llmqueue.batches.control import Batches
from llmqueue.batches.files import iter_jobs
from llmqueue.batches.window import WindowFeeder
from llmqueue.errors import RunStoppedError
from llmqueue.queue.store import JobStore
from tests.batches.test_window import BATCH, QUEUE, make_file, prepare


@pytest.fixture
def batches(redis: Redis) -> Batches:
    return Batches(JobStore(redis, queue_name=QUEUE, job_ttl=3600, result_ttl=3600))


def ahead_of(path: Path) -> CheckAhead:
    return CheckAhead(path, batch_id=BATCH, default_model="openai/sim", llm_config=None, refuse=None)


def feeder_of(batches: Batches, source: Path, frontier: list[float], window: int) -> WindowFeeder:
    return WindowFeeder(
        batches,
        BATCH,
        source,
        iter_jobs(source, batch_id=BATCH, default_model="openai/sim"),
        window=window,
        cache=False,
        answered_from=None,
        checked_through=lambda: frontier[0],
    )


async def listed(redis: Redis) -> list[int]:
    members = await redis.zrange(keys.batch_jobs(BATCH), 0, -1, withscores=True)
    return [int(score) for _, score in members]


def test_only_a_file_above_the_size_set_is_checked_ahead(tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.jsonl", 10)
    size = source.stat().st_size
    assert checks_ahead(source, size - 1)
    assert not checks_ahead(source, size)


async def test_the_feeding_stops_at_what_the_check_passed_and_goes_on_as_it_passes_more(
    batches: Batches,
    redis: Redis,
    tmp_path: Path,
) -> None:
    source = make_file(tmp_path / "f.jsonl", 40)
    await prepare(batches, source)
    frontier = [12.0]
    feeder = feeder_of(batches, source, frontier, window=100)
    await feeder.start(None)
    assert await listed(redis) == list(range(1, 13))
    assert await redis.hget(keys.batch(BATCH), "total") is None  # not known until the check ends
    assert not feeder.exhausted
    assert await feeder.top_up() == 0  # nothing more passed: nothing more fed, and no loop
    frontier[0] = 30
    assert await feeder.top_up() == 18
    assert await listed(redis) == list(range(1, 31))
    frontier[0] = math.inf
    await feeder.top_up()
    assert feeder.exhausted
    assert await listed(redis) == list(range(1, 41))
    assert (await batches.status(BATCH)).total == 40


async def test_a_bad_line_is_never_fed_nor_skipped_when_the_file_is_checked_ahead(
    batches: Batches,
    redis: Redis,
    tmp_path: Path,
) -> None:
    source = make_file(tmp_path / "f.jsonl", 20, bad=(9,))
    await prepare(batches, source)
    frontier = [math.inf]  # a check that has not said so yet: the feeding itself stops at the line
    feeder = feeder_of(batches, source, frontier, window=100)
    await feeder.start(None)
    assert await listed(redis) == list(range(1, 9))
    assert feeder.report.rejected == []  # not dropped as --skip-invalid would
    assert not feeder.exhausted
    assert await feeder.top_up() == 0


async def test_the_check_finds_the_first_bad_line_far_in_a_file_and_names_every_bad_one(
    tmp_path: Path,
) -> None:
    count = HEAD_LINES + 3000
    source = make_file(tmp_path / "f.jsonl", count, bad=(HEAD_LINES + 1000, HEAD_LINES + 2000))
    ahead = ahead_of(source).start()
    head = ahead.wait_for_head()  # the thread may already be past the bad lines: they are its to tell
    assert head.lines >= HEAD_LINES
    error = await ahead.stop_error(BATCH, fed=25)
    assert ahead.done and ahead.failed
    assert ahead.checked_through() == HEAD_LINES + 1000 - 1
    assert isinstance(error, RunStoppedError)
    message = str(error)
    assert f"2 of {count} line(s) are invalid" in message
    assert f"line {HEAD_LINES + 1000}:" in message and f"line {HEAD_LINES + 2000}:" in message
    assert "the 25 line(s) it had queued stay in the batch" in message
    assert f"resume with: llmqueue run --resume {BATCH} (add --skip-invalid" in message
    assert "resume with: --resume X --output o.jsonl (add" in error.with_resume("--resume X --output o.jsonl")


async def test_a_good_file_checked_ahead_lets_every_line_through_once_read(tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.jsonl", 500)
    ahead = ahead_of(source).start()
    await asyncio.to_thread(ahead._thread.join)
    assert ahead.done and not ahead.failed
    assert ahead.checked_through() == math.inf
    assert ahead.check.lines == ahead.check.valid == 500
