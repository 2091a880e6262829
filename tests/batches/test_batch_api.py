"""The Batch API tier end to end through LiteLLM, against the simulated /v1/files and /v1/batches."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from llmqueue import keys
from llmqueue.batches.batch_api import BatchApiRun, FileLimits, cancel_provider_batches, check_supported
from llmqueue.batches.control import Batches
from llmqueue.batches.files import iter_jobs, write_results
from llmqueue.cache import ResponseCache, open_store
from llmqueue.errors import ConfigError
from llmqueue.limits.tokens import estimate_tokens
from llmqueue.models import Job
from llmqueue.producer import Producer
from llmqueue.settings import Settings
from llmqueue.simulator.server import RunningProvider
from tests.support.settings import running_worker

MODEL = "openai/gpt-4o-mini"  # priced by LiteLLM: input 0.15, output 0.60 per million; Batch API half
WAIT = 30.0


def review_file(path: Path, reviews: list[str], **extra: Any) -> Path:
    lines = [
        {"custom_id": f"review-{n}", "model": MODEL, "messages": [{"role": "user", "content": text}], **extra}
        for n, text in enumerate(reviews)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def jobs_of(path: Path, batch_id: str, cache: bool = False) -> list[Job]:
    jobs = [item for item in iter_jobs(path, batch_id=batch_id) if isinstance(item, Job)]
    for job in jobs:
        job.cache = cache
    return jobs


async def run_tier(
    producer: Producer, settings: Settings, path: Path, batch_id: str, *, cache: bool = False, **options: Any
) -> list[dict[str, Any]]:
    batches = Batches(producer.store)
    jobs = jobs_of(path, batch_id, cache)
    await batches.register(batch_id, jobs, source=path)
    response_cache = None
    if cache:
        response_cache = ResponseCache(open_store(settings.cache), producer.redis, claim_seconds=60)
    tier = BatchApiRun(batches, settings, cache=response_cache, poll_interval=0.05, **options)
    await asyncio.wait_for(tier.run(batch_id, jobs, None), WAIT)
    if response_cache is not None:
        await response_cache.close()
    out = path.with_name(f"{batch_id}.out.jsonl")
    await write_results(batches.results(batch_id), out)
    return [json.loads(line) for line in out.read_text().splitlines()]


async def test_lines_come_back_in_input_order_at_the_batch_price(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    reviews = ["the soup was cold", "lovely staff", "never again", "best pizza in town"]
    records = await run_tier(producer, settings, review_file(tmp_path / "in.jsonl", reviews), "b1")
    assert [r["custom_id"] for r in records] == [f"review-{n}" for n in range(4)]
    assert all(
        r["llmqueue"]["via"] == "batch-api" and r["llmqueue"]["status"] == "succeeded" for r in records
    )
    assert [r["response"]["body"]["choices"][0]["message"]["content"] for r in records] == [
        f"echo: {text}" for text in reviews
    ]
    usage = records[0]["llmqueue"]["usage"]
    expected = usage["prompt_tokens"] * 0.075e-6 + usage["completion_tokens"] * 0.3e-6
    assert records[0]["llmqueue"]["cost"] == pytest.approx(expected)
    assert provider.stats.requests == 0  # no live call: everything went through /v1/batches
    assert provider.provider.batch_api.lines_answered == 4
    status = await Batches(producer.store).status("b1")
    assert (status.succeeded, status.total) == (4, 4)


async def test_lines_are_split_into_files_within_the_limits(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    path = review_file(tmp_path / "in.jsonl", [f"review number {n}" for n in range(7)])
    records = await run_tier(producer, settings, path, "b1", limits=FileLimits(max_lines=3))
    assert len(provider.provider.batch_api.batches) == 3  # 3 + 3 + 1
    assert [r["custom_id"] for r in records] == [f"review-{n}" for n in range(7)]
    small = await run_tier(producer, settings, path, "b2", limits=FileLimits(max_bytes=400))
    api = provider.provider.batch_api
    inputs = [api.files[batch.input_file_id].content for batch in list(api.batches.values())[3:]]
    assert len(inputs) > 1 and all(len(content) <= 400 for content in inputs)
    assert sum(content.count(b"\n") for content in inputs) == 7
    assert all(r["llmqueue"]["status"] == "succeeded" for r in small)


async def test_an_expired_batch_is_sent_again(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    provider.provider.batch_api.expire_next(1)
    records = await run_tier(producer, settings, review_file(tmp_path / "in.jsonl", ["a", "b", "c"]), "b1")
    statuses = [batch.status for batch in provider.provider.batch_api.batches.values()]
    assert statuses == ["expired", "completed"]
    assert all(r["llmqueue"]["status"] == "succeeded" for r in records)


async def test_a_line_the_provider_rejects_fails_and_the_others_succeed(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    review_file(path, ["fine", "also fine"])
    with path.open("a", encoding="utf-8") as out:  # valid for llmqueue, refused by the provider
        bad = {"custom_id": "bad", "model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        out.write(json.dumps({**bad, "max_tokens": -1}) + "\n")
    records = await run_tier(producer, settings, path, "b1")
    assert [r["llmqueue"]["status"] for r in records] == ["succeeded", "succeeded", "failed"]
    assert records[2]["error"] is None and records[2]["response"]["status_code"] == 400
    assert "max_tokens" in records[2]["response"]["body"]["error"]["message"]
    assert records[2]["llmqueue"]["errors"][-1]["kind"] == "bad_request"
    assert len(provider.provider.batch_api.batches) == 1  # a refused line is not sent again


async def test_cached_lines_are_not_uploaded(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    path = review_file(tmp_path / "in.jsonl", ["a", "b", "c"])
    await run_tier(producer, settings, path, "b1", cache=True)
    records = await run_tier(producer, settings, path, "b2", cache=True)
    assert len(provider.provider.batch_api.batches) == 1
    assert [r["llmqueue"]["cached"] for r in records] == [True] * 3


async def tier_run_underway(
    producer: Producer, settings: Settings, tmp_path: Path
) -> tuple[Batches, list[Job], asyncio.Task[None]]:
    """Batch ``b1`` of two lines sent through the Batch API tier, once the provider holds its batch."""
    path = review_file(tmp_path / "in.jsonl", ["a", "b"])
    batches = Batches(producer.store)
    jobs = jobs_of(path, "b1")
    await batches.register("b1", jobs, source=path)
    running = asyncio.create_task(
        BatchApiRun(batches, settings, cache=None, poll_interval=0.05).run("b1", jobs, None)
    )
    while not await producer.redis.hlen(keys.batch_api("b1")):
        await asyncio.sleep(0.02)
    return batches, jobs, running


async def test_resume_collects_the_provider_batch_of_an_interrupted_run(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    provider.provider.batch_api.in_progress_seconds = 1.0
    batches, jobs, first = await tier_run_underway(producer, settings, tmp_path)
    first.cancel()  # Ctrl-C while the provider works on the batch
    await asyncio.gather(first, return_exceptions=True)
    assert (await batches.status("b1")).finished == 0
    await asyncio.wait_for(
        BatchApiRun(batches, settings, cache=None, poll_interval=0.05).run("b1", jobs, None), WAIT
    )
    assert len(provider.provider.batch_api.batches) == 1  # collected, not sent again
    assert (await batches.status("b1")).succeeded == 2


async def test_cancel_stops_the_provider_batches_and_the_lines_end_cancelled(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    provider.provider.batch_api.in_progress_seconds = 5.0
    batches, _, running = await tier_run_underway(producer, settings, tmp_path)
    await batches.cancel("b1")
    assert await cancel_provider_batches(batches, "b1", settings.llm) == 1
    await asyncio.wait_for(running, WAIT)
    status = await batches.status("b1")
    assert (status.cancelled, status.succeeded) == (2, 0)
    assert [b.status for b in provider.provider.batch_api.batches.values()] == ["cancelled"]


def test_a_model_the_tier_cannot_reach_is_refused_before_upload(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"model": "anthropic/claude-3-5-haiku-20241022", "messages": [
        {"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(ConfigError, match="OpenAI-compatible"):
        check_supported(jobs_of(path, "b1"), settings.llm)


async def test_fallback_live_sends_what_an_expired_batch_left_to_the_workers(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    provider.provider.batch_api.expire_next(1)
    async with running_worker(settings):
        records = await run_tier(
            producer, settings, review_file(tmp_path / "in.jsonl", ["a", "b", "c"]), "b1", fallback_live=True
        )
    assert [b.status for b in provider.provider.batch_api.batches.values()] == ["expired"]
    assert provider.stats.requests == 3
    assert [(r["llmqueue"]["status"], r["llmqueue"]["via"]) for r in records] == [("succeeded", "live")] * 3


async def test_an_enqueued_token_limit_cuts_files_and_sends_one_at_a_time(
    producer: Producer, settings: Settings, provider: RunningProvider, tmp_path: Path
) -> None:
    path = review_file(tmp_path / "in.jsonl", [f"review {n}" for n in range(6)], max_tokens=5)
    per_line = estimate_tokens(jobs_of(path, "probe")[0], MODEL, settings.llm.default_completion_tokens)
    records = await run_tier(producer, settings, path, "b1", limits=FileLimits(max_tokens=2 * per_line + 1))
    api = provider.provider.batch_api
    batches = list(api.batches.values())
    assert [api.files[b.input_file_id].content.count(b"\n") for b in batches] == [2, 2, 2]
    # Each file went out only once the one before it had ended (0.1 s validating + 0.3 s in progress).
    gaps = [later.created - earlier.created for earlier, later in itertools.pairwise(batches)]
    assert all(gap >= 0.4 for gap in gaps)
    assert [r["llmqueue"]["status"] for r in records] == ["succeeded"] * 6
