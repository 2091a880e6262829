"""Batches against a real Redis, with an in-process arq worker and the simulated provider."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches import submit
from llmqueue.batches.control import Batches, new_batch_id
from llmqueue.batches.files import iter_jobs, job_id_for
from llmqueue.cache import job_cache_key
from llmqueue.cache.disk import DiskStore
from llmqueue.errors import BatchError, InvalidBatchFileError
from llmqueue.models import Job, JobResult
from llmqueue.producer import Producer
from llmqueue.queue.ledger import BatchStatus
from llmqueue.queue.payload import job_argument
from llmqueue.settings import Settings
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from llmqueue.simulator.wire import chat_usage
from tests.support.settings import make_settings, running_worker

WAIT_TIMEOUT = 10.0


def chat_line(text: str, custom_id: str | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if custom_id is not None:
        line["custom_id"] = custom_id
    return line


def jobs_in(path: Path, batch_id: str) -> list[Job]:
    return [item for item in iter_jobs(path, batch_id=batch_id) if isinstance(item, Job)]


def write_file(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    """A JSONL file of ``lines``: dicts as JSON, strings written as they are (for bad lines)."""
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def chat_file(path: Path, count: int) -> Path:
    return write_file(path, [chat_line(f"question {n}", f"req-{n}") for n in range(count)])


async def wait_done(batches: Batches, batch_id: str) -> BatchStatus:
    return await asyncio.wait_for(batches.wait(batch_id, interval=0.02), WAIT_TIMEOUT)


async def all_results(batches: Batches, batch_id: str) -> list[tuple[str, str, JobResult | None]]:
    return [entry async for entry in batches.results(batch_id)]


async def batch_job_ids(redis: Redis, batch_id: str) -> list[str]:
    members = await redis.zrange(keys.batch_jobs(batch_id), 0, -1)
    return [member.decode() for member in members]


@pytest.fixture
def batches(producer: Producer) -> Batches:
    return Batches(producer.store)


# ---- submitting ----------------------------------------------------------------------------------


async def test_submit_file_enqueues_every_line_and_status_shows_them_queued(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    path = chat_file(tmp_path / "in.jsonl", 5)
    report = await batches.submit_file(path, "b1")
    assert (report.batch_id, report.submitted, report.already_known, report.rejected) == ("b1", 5, 0, [])
    assert await redis.zcard(settings.worker.queue_name) == 5
    status = await batches.status("b1")
    assert (status.total, status.queued, status.running, status.finished) == (5, 5, 0, 0)
    assert not status.done and status.source == str(path.resolve())
    assert await batches.list_batches() == ["b1"]


async def test_file_with_a_bad_line_raises_naming_the_line_and_enqueues_nothing(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    path = write_file(tmp_path / "in.jsonl", [chat_line("a"), "{not json", chat_line("c")])
    with pytest.raises(InvalidBatchFileError, match=r"line 2: not valid JSON") as caught:
        await batches.submit_file(path, "b1")
    assert [error.line for error in caught.value.check.errors] == [2]
    assert await redis.zcard(settings.worker.queue_name) == 0
    assert not await redis.exists(keys.batch_jobs("b1"))


async def test_skip_invalid_enqueues_good_lines_and_returns_rejected_line_numbers(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    lines: list[dict[str, Any] | str] = [chat_line("a"), "[1, 2]", chat_line("c"), '{"messages": []}']
    report = await batches.submit_file(write_file(tmp_path / "in.jsonl", lines), "b1", skip_invalid=True)
    assert report.submitted == 2
    assert [error.line for error in report.rejected] == [2, 4]
    assert await redis.zcard(settings.worker.queue_name) == 2
    assert await batch_job_ids(redis, "b1") == [job_id_for("b1", 1), job_id_for("b1", 3)]
    assert (await batches.status("b1")).total == 2


async def test_resubmitting_the_same_file_enqueues_nothing_new(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    path = chat_file(tmp_path / "in.jsonl", 4)
    await batches.submit_file(path, "b1")
    again = await batches.submit_file(path, "b1")
    assert (again.submitted, again.already_known) == (0, 4)
    assert await redis.zcard(settings.worker.queue_name) == 4
    assert await batch_job_ids(redis, "b1") == [job_id_for("b1", n) for n in range(1, 5)]
    assert (await batches.status("b1")).total == 4


async def test_lines_the_cache_holds_are_answered_as_they_are_submitted_and_never_queued(
    producer: Producer, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    store = DiskStore(tmp_path / "answers", ttl=None, max_bytes=10**6)
    batches = Batches(producer.store, settings)
    lines = [chat_line(f"q{n}", f"req-{n}") for n in range(4)]
    known = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}}]}
    for n in (1, 3):  # answered before, in another batch (another job id: the same request)
        job = Job.parse({"messages": lines[n]["messages"], "batch_id": "b0"})
        await store.put(job_cache_key(job, settings.llm), known)
    path = write_file(tmp_path / "in.jsonl", lines)
    try:
        report = await batches.submit_file(path, "b1", answered_from=(store, settings))
        again = await batches.submit_file(path, "b1", answered_from=(store, settings))  # nothing twice
    finally:
        await store.close()
    assert (report.submitted, report.cached, report.already_known) == (4, 2, 0)
    assert (again.submitted, again.cached, again.already_known) == (0, 0, 4)
    assert await redis.zcard(settings.worker.queue_name) == 2
    status = await batches.status("b1")
    assert (status.total, status.queued, status.succeeded, status.cached) == (4, 2, 2, 2)
    results = {custom_id: result for _, custom_id, result in await all_results(batches, "b1")}
    assert [results[f"req-{n}"] is None for n in range(4)] == [True, False, True, False]
    answered = results["req-1"]
    assert answered is not None and answered.cached and answered.response == known and answered.cost == 0


async def test_a_cache_that_cannot_be_read_answers_nothing_and_every_line_is_queued(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    class LockedStore(DiskStore):
        async def get(self, key: str) -> dict[str, Any] | None:
            raise sqlite3.OperationalError("database is locked")

    store = LockedStore(tmp_path / "answers", ttl=None, max_bytes=10**6)
    try:
        path = chat_file(tmp_path / "in.jsonl", 3)
        report = await batches.submit_file(path, "b1", answered_from=(store, settings))
    finally:
        await store.close()
    assert (report.submitted, report.cached) == (3, 0)
    assert await redis.zcard(settings.worker.queue_name) == 3


async def test_resume_after_a_worker_ran_part_of_the_file_runs_only_the_new_lines(
    batches: Batches, settings: Settings, redis: Redis, provider: RunningProvider, tmp_path: Path
) -> None:
    lines = [chat_line(f"q{n}", f"req-{n}") for n in range(6)]
    first = await batches.submit_file(write_file(tmp_path / "part.jsonl", lines[:3]), "b1")
    async with running_worker(settings):
        await wait_done(batches, "b1")
        resumed = await batches.submit_file(write_file(tmp_path / "full.jsonl", lines), "b1")
        status = await wait_done(batches, "b1")
    assert first.submitted == 3
    assert (resumed.submitted, resumed.already_known) == (3, 3)
    assert (status.total, status.succeeded) == (6, 6)
    assert provider.stats.requests == 6
    assert await batch_job_ids(redis, "b1") == [job_id_for("b1", n) for n in range(1, 7)]


async def test_resume_after_fixing_a_rejected_line_lists_every_job_once(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    write_file(path, [chat_line("a"), "{broken", chat_line("c")])
    await batches.submit_file(path, "b1", skip_invalid=True)
    write_file(path, [chat_line("a"), chat_line("b"), chat_line("c")])
    resumed = await batches.submit_file(path, "b1")
    assert (resumed.submitted, resumed.already_known) == (1, 2)
    listed = await batch_job_ids(redis, "b1")
    assert sorted(listed) == [job_id_for("b1", n) for n in (1, 2, 3)]
    assert (await batches.status("b1")).total == 3


@pytest.mark.parametrize("change", ["edited line", "another file", "another --model"])
async def test_a_resubmission_asking_other_things_on_known_lines_is_refused_whole(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path, change: str
) -> None:
    # Job ids come from the batch and the line number: before, the known jobs' answers were kept for
    # lines that now ask something else (a user's evaluation file edited and submitted again).
    path = write_file(tmp_path / "in.jsonl", [chat_line(f"q{n}", f"req-{n}") for n in range(4)])
    await batches.submit_file(path, "b1")
    model = None
    if change == "edited line":
        write_file(path, [chat_line(f"q{n}" if n != 2 else "EDITED", f"req-{n}") for n in range(4)])
    elif change == "another file":
        path = write_file(tmp_path / "other.jsonl", [chat_line(f"other {n}") for n in range(6)])
    else:
        model = "openai/another-model"
    queued = await redis.zcard(settings.worker.queue_name)

    with pytest.raises(BatchError, match=r"holds other requests for line\(s\) (3|1, 2, 3, 4)\b"):
        await batches.submit_file(path, "b1", default_model=model)

    assert await redis.zcard(settings.worker.queue_name) == queued
    assert await batch_job_ids(redis, "b1") == [job_id_for("b1", n) for n in range(1, 5)]
    assert (await batches.status("b1")).total == 4


async def test_the_batch_api_tier_registering_a_changed_file_again_is_refused(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    # The tier registers the file's jobs on every run, a resume included: before, an edited file's
    # hashes and custom ids replaced the first ones, and the provider's answers went to the new lines.
    path = write_file(tmp_path / "in.jsonl", [chat_line(f"q{n}", f"req-{n}") for n in range(3)])
    await batches.register("b1", jobs_in(path, "b1"), source=path)
    await batches.register("b1", jobs_in(path, "b1"), source=path)  # the same file: fine
    write_file(path, [chat_line("EDITED" if n == 0 else f"q{n}", f"req-{n}") for n in range(3)])

    with pytest.raises(BatchError, match=r"holds other requests for line\(s\) 1:"):
        await batches.register("b1", jobs_in(path, "b1"), source=path)

    custom_ids = await redis.hgetall(keys.batch_custom_ids("b1"))
    assert sorted(v.decode() for v in custom_ids.values()) == ["req-0", "req-1", "req-2"]


async def test_a_resubmission_with_new_lines_after_the_known_ones_is_taken(
    batches: Batches, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    lines = [chat_line(f"q{n}", f"req-{n}") for n in range(5)]
    await batches.submit_file(write_file(tmp_path / "in.jsonl", lines[:3]), "b1")
    again = await batches.submit_file(write_file(tmp_path / "in.jsonl", lines), "b1", priority=5)
    assert (again.submitted, again.already_known) == (2, 3)


# ---- running ---------------------------------------------------------------------------------------


async def test_wait_returns_when_every_job_is_done_with_counts_and_usage(
    batches: Batches, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    await batches.submit_file(chat_file(tmp_path / "in.jsonl", 5), "b1")
    async with running_worker(settings):
        status = await wait_done(batches, "b1")
    assert status.done and (status.total, status.succeeded, status.failed, status.cancelled) == (5, 5, 0, 0)
    assert (status.queued, status.running, status.retry_waiting) == (0, 0, 0)
    assert status.requests == provider.stats.requests == 5
    assert status.tokens == status.prompt_tokens + status.completion_tokens == provider.stats.tokens_admitted
    assert status.cost >= 0 and not status.budget_exceeded


async def test_a_finished_batchs_elapsed_time_and_throughput_stop_with_its_last_job(
    batches: Batches, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    # Before, `status` of a batch done in seconds showed minutes elapsed and a throughput falling with
    # every later look.
    await batches.submit_file(chat_file(tmp_path / "in.jsonl", 4), "b1")
    async with running_worker(settings):
        done = await wait_done(batches, "b1")
    await asyncio.sleep(0.5)
    later = await batches.status("b1")
    assert later.done
    assert later.elapsed == pytest.approx(done.elapsed, abs=0.05)
    assert later.throughput == pytest.approx(4 / later.elapsed)


async def test_results_follow_input_order_whatever_the_completion_order(
    redis_url: str, tmp_path: Path
) -> None:
    config = ProviderConfig(api_key=None, latency=0.05, latency_jitter=1.0, seed=7)
    async with run_provider(config) as jittery:
        settings = make_settings(redis_url, jittery.base_url)
        async with Producer(settings) as producer:
            batches = Batches(producer.store)
            custom_ids = [f"item-{n}" for n in (5, 3, 9, 1, 7, 2, 8, 0, 6, 4)]
            path = write_file(tmp_path / "in.jsonl", [chat_line(f"q {c}", c) for c in custom_ids])
            await batches.submit_file(path, "b1")
            async with running_worker(settings):
                await wait_done(batches, "b1")
            results = await all_results(batches, "b1")
    assert [custom_id for _, custom_id, _ in results] == custom_ids
    assert [job_id for job_id, _, _ in results] == [job_id_for("b1", n) for n in range(1, 11)]
    finished = [result.timings.finished_at for _, _, result in results if result is not None]
    assert len(finished) == 10 and finished != sorted(finished)  # they did complete out of order
    assert [result.text for _, _, result in results if result] == [f"echo: q {c}" for c in custom_ids]


async def test_failed_jobs_are_counted_and_retry_failed_runs_them_to_success(
    batches: Batches, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    await batches.submit_file(chat_file(tmp_path / "in.jsonl", 4), "b1")
    provider.fail_next(2, 400)
    async with running_worker(settings):
        failed = await wait_done(batches, "b1")
        retried = await batches.retry_failed("b1")
        after_retry = await batches.status("b1")
        final = await wait_done(batches, "b1")
    assert (failed.succeeded, failed.failed) == (2, 2)
    assert retried == 2
    assert (after_retry.failed, after_retry.succeeded, after_retry.done) == (0, 2, False)
    assert (final.succeeded, final.failed, final.total) == (4, 0, 4)
    assert final.requests == provider.stats.requests == 6
    results = await all_results(batches, "b1")
    assert all(result is not None and result.status == "succeeded" for _, _, result in results)


async def test_retry_failed_gives_the_jobs_a_fresh_retry_budget(
    redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url, num_retries=1)
    async with Producer(settings) as producer:
        batches = Batches(producer.store)
        await batches.submit_file(chat_file(tmp_path / "in.jsonl", 1), "b1")
        provider.fail_next(2, 503)
        async with running_worker(settings):
            exhausted = await wait_done(batches, "b1")
            provider.fail_next(1, 503)
            assert await batches.retry_failed("b1") == 1
            final = await wait_done(batches, "b1")
        ((_, _, result),) = await all_results(batches, "b1")
    assert exhausted.failed == 1
    assert (final.succeeded, final.failed) == (1, 0)
    assert result is not None and result.status == "succeeded" and result.attempts == 2
    assert [error.kind for error in result.errors] == ["server_error"]


async def test_cancel_ends_queued_jobs_as_cancelled_and_a_later_worker_calls_nothing(
    batches: Batches, producer: Producer, redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": 1})
    await batches.submit_file(chat_file(tmp_path / "in.jsonl", 4), "b1")
    assert await batches.cancel("b1") == 4
    assert await producer.redis.zcard(settings.worker.queue_name) == 0
    status = await batches.status("b1")
    assert (status.cancelled, status.total, status.queued, status.done) == (4, 4, 0, True)
    assert status.cancel_requested
    results = await all_results(batches, "b1")
    assert [r.status if r else None for _, _, r in results] == ["cancelled"] * 4
    assert [r.error.kind if r and r.error else None for _, _, r in results] == ["cancelled"] * 4
    # One job at a time in queue order: a sentinel queued last runs only after anything left of the batch.
    async with running_worker(settings):
        await (await producer.submit(chat_line("sentinel"))).result(timeout=WAIT_TIMEOUT)
    assert provider.stats.requests == 1


async def test_token_budget_cancels_the_jobs_after_the_cap_without_calling_the_provider(
    redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    line = chat_line("the same short question")
    per_job = chat_usage({"model": "sim-model", **line}, ProviderConfig().completion_tokens).total_tokens
    path = write_file(tmp_path / "in.jsonl", [line] * 6)
    settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": 1})
    async with Producer(settings) as producer:
        batches = Batches(producer.store)
        await batches.submit_file(path, "b1", max_tokens=2 * per_job - 1, cache=False)  # identical lines
        async with running_worker(settings):
            status = await wait_done(batches, "b1")
        results = await all_results(batches, "b1")
    assert provider.stats.requests == 2
    assert (status.succeeded, status.cancelled, status.tokens) == (2, 4, 2 * per_job)
    assert status.budget_exceeded and status.max_tokens == 2 * per_job - 1
    assert [r.status for _, _, r in results if r] == ["succeeded"] * 2 + ["cancelled"] * 4
    assert [r.error.kind for _, _, r in results[2:] if r and r.error] == ["budget_exceeded"] * 4


@pytest.mark.parametrize("skip_invalid", [False, True])
async def test_a_cost_budget_is_refused_for_a_model_without_a_price_named_only_by_the_last_line(
    producer: Producer, tmp_path: Path, skip_invalid: bool
) -> None:
    batches = Batches(producer.store, producer.settings)
    # The checked file's models come from its check (no second reading), the unchecked one's from a pass.
    priced = {**chat_line("q"), "model": "openai/gpt-4o-mini"}
    lines = [{**priced, "custom_id": f"p{n}"} for n in range(5)]
    path = write_file(tmp_path / "in.jsonl", [*lines, {**chat_line("q"), "model": "openai/sim-model-2"}])
    with pytest.raises(BatchError, match="knows none for 'openai/sim-model-2'"):
        await batches.submit_file(path, "unpriced", max_cost=1.0, skip_invalid=skip_invalid)
    assert not await batches.redis.exists(keys.batch("unpriced"))


async def test_cost_budget_cancels_the_jobs_after_the_cap_without_calling_the_provider(
    redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    # A model LiteLLM has a price for, served by the simulated provider: each call has a real cost.
    line = {**chat_line("the same short question"), "model": "openai/gpt-4o-mini"}
    path = write_file(tmp_path / "in.jsonl", [line] * 6)
    settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": 1})
    async with Producer(settings) as producer:
        batches = Batches(producer.store)
        await batches.submit_file(path, "priced", max_cost=1e-9, cache=False)  # identical lines
        async with running_worker(settings):
            status = await wait_done(batches, "priced")
        results = await all_results(batches, "priced")
    assert provider.stats.requests == 1  # the first call spent past the cap; no other job started
    assert results[0][2] is not None and results[0][2].cost is not None and results[0][2].cost > 0
    assert (status.succeeded, status.cancelled) == (1, 5)
    assert status.budget_exceeded and status.cost == pytest.approx(results[0][2].cost)
    assert [r.error.kind for _, _, r in results[1:] if r and r.error] == ["budget_exceeded"] * 5


async def test_rate_limited_counts_each_429_and_retry_waiting_returns_to_zero(
    batches: Batches, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    await batches.submit_file(chat_file(tmp_path / "in.jsonl", 3), "b1")
    provider.fail_next(2, 429, retry_after=0.05)
    async with running_worker(settings):
        await wait_done(batches, "b1")
    # Read once the worker has stopped: every job's bookkeeping has ended by then.
    status = await batches.status("b1")
    assert provider.stats.rate_limited == 2
    assert status.succeeded == 3
    assert status.requests == provider.stats.requests == 5
    assert (status.retry_waiting, status.running) == (0, 0)
    assert status.rate_limited == 2


# ---- ids and priority ------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["status", "cancel", "retry_failed", "results"])
async def test_unknown_batch_id_raises_batch_error(batches: Batches, operation: str) -> None:
    with pytest.raises(BatchError, match="no batch named 'nope'"):
        if operation == "results":
            await all_results(batches, "nope")
        else:
            await getattr(batches, operation)("nope")


async def test_batch_id_with_spaces_is_rejected_before_anything_is_written(
    batches: Batches, redis: Redis, tmp_path: Path
) -> None:
    with pytest.raises(BatchError, match="invalid batch id 'my batch'"):
        await batches.submit_file(chat_file(tmp_path / "in.jsonl", 1), "my batch")
    assert await redis.dbsize() == 0


async def test_an_interactive_batch_runs_before_a_batch_queued_earlier(
    batches: Batches, redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": 1, "reserved_slots": 0})
    await batches.submit_file(chat_file(tmp_path / "eval.jsonl", 3), "eval")
    await batches.submit_file(chat_file(tmp_path / "urgent.jsonl", 2), "urgent", priority=2)
    async with running_worker(settings):
        await wait_done(batches, "eval")
    urgent = [r for _, _, r in await all_results(batches, "urgent")]
    normal = [r for _, _, r in await all_results(batches, "eval")]
    assert all(r is not None for r in urgent + normal)
    assert max(r.timings.finished_at for r in urgent if r) < min(r.timings.finished_at for r in normal if r)


async def test_two_batches_progress_together_in_the_ratio_of_their_weights(
    batches: Batches, redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": 4})
    await batches.submit_file(chat_file(tmp_path / "a.jsonl", 120), "team-a")
    await batches.submit_file(chat_file(tmp_path / "b.jsonl", 120), "team-b", weight=2)
    async with running_worker(settings):  # 240 jobs: more time than wait_done's on a busy machine
        await asyncio.wait_for(batches.wait("team-a", interval=0.05), 60)
        await asyncio.wait_for(batches.wait("team-b", interval=0.05), 60)
    results = [r for b in ("team-a", "team-b") for _, _, r in await all_results(batches, b) if r is not None]
    finished = sorted((r.timings.finished_at, r.batch_id) for r in results)
    first = Counter(batch for _, batch in finished[:90])  # while both had jobs ready
    assert abs(first["team-b"] - 60) <= 12 and abs(first["team-a"] - 30) <= 6, first


async def test_a_line_may_set_its_own_priority(
    batches: Batches, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_file(
        tmp_path / "mixed.jsonl",
        [
            chat_line("bulk"),
            {**chat_line("urgent"), "priority": "interactive"},
            {**chat_line("very urgent"), "llmqueue": {"priority": 5}},
        ],
    )
    await batches.submit_file(path, "mixed")
    jobs = [
        Job.parse(job_argument(await redis.get(keys.arq_job(job_id_for("mixed", n))) or b""))
        for n in (1, 2, 3)
    ]
    assert [job.priority for job in jobs] == [0, 2, 5]
    assert all("priority" not in job.params for job in jobs)


def test_files_of_one_name_submitted_in_the_same_second_get_batches_of_their_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(submit.time, "strftime", lambda _format: "20261202-120000")
    first, second = new_batch_id(tmp_path / "a" / "eval.jsonl"), new_batch_id(tmp_path / "b" / "eval.jsonl")
    assert first != second
    assert first.startswith("eval-20261202-120000-") and second.startswith("eval-20261202-120000-")
