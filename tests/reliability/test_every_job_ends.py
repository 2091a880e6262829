"""Every job ends with exactly one result, whatever it holds and whatever the provider sends back.

Real worker processes, real Redis, the simulated provider in its own process answering 200 with
broken bodies (``broken_next``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.batches.files import check_file
from llmqueue.errors import JobValidationError
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import wait_for_results, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

QUEUE = "llmqueue:queue"
BROKEN_SHAPES = ("empty_choices", "no_choices", "no_message", "truncated", "html", "empty")


def _arq(job: dict[str, object]) -> bytes:
    # json.dumps escapes a lone surrogate as "\ud800": valid JSON, as an older producer would queue it.
    return json.dumps({"t": 1, "f": "run_job", "a": [job], "k": {}, "et": 0}).encode()


async def test_a_lone_surrogate_is_refused_at_submission_and_ends_failed_if_queued_anyway(
    redis_url: str, tmp_path: Path
) -> None:
    lines = [
        {
            "custom_id": "fine",
            "model": "openai/sim-model",
            "messages": [{"role": "user", "content": "Grüße"}],
        },
        {"custom_id": "broken", "messages": [{"role": "user", "content": "tail \ud800"}]},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    check = check_file(batch, batch_id="odd")
    assert check.valid == 1 and [e.line for e in check.errors] == [2]
    assert "cannot be encoded as UTF-8" in check.errors[0].reason

    job = {"id": "surrogate", "messages": [{"role": "user", "content": "tail \ud800"}]}
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        async with Producer(make_settings(redis_url, provider.base_url)) as producer:
            with pytest.raises(JobValidationError, match="cannot be encoded as UTF-8"):
                await producer.submit(job)
            redis = producer.redis
            await redis.set(keys.arq_job("surrogate"), _arq(job))
            await redis.zadd(QUEUE, {"surrogate": int(time.time() * 1000)})
            env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
            with worker_processes(env, tmp_path) as workers:
                await workers.start_ready(1)
                results = await wait_for_results(redis, ["surrogate"], 30)
                assert await redis.zscore(QUEUE, "surrogate") is None
        requests = provider.stats()["requests"]
    result = results["surrogate"]
    assert result.status == "failed" and result.error is not None
    assert result.error.kind == "invalid_job" and "UTF-8" in result.error.message
    assert requests == 0


async def test_an_answer_holding_a_lone_surrogate_is_stored_with_a_replacement_character(
    redis_url: str, tmp_path: Path
) -> None:
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        provider.control("broken_next", count=1, shape="lone_surrogate")
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(1)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                handle = await producer.submit(
                    {"model": "openai/sim-model", "messages": [{"role": "user", "content": "say it"}]}
                )
                result = await handle.result(timeout=30)
        stats = provider.stats()
    assert result.ok
    assert result.text == "half a pair: \ufffd end"
    assert stats["broken"] == 1 and stats["requests"] == 1


async def test_a_200_without_an_answer_fails_as_invalid_response_once_without_retries(
    redis_url: str, tmp_path: Path
) -> None:
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        for shape in BROKEN_SHAPES:
            provider.control("broken_next", count=1, shape=shape)
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY, worker_max_jobs=1)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(1)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                ids = []
                # One at a time, so each shape meets one job (the provider answers in call order).
                for shape in BROKEN_SHAPES:
                    handle = await producer.submit(
                        {
                            "id": f"shape-{shape}",
                            "model": "openai/sim-model",
                            "messages": [{"role": "user", "content": f"question for {shape}"}],
                        }
                    )
                    await handle.result(timeout=30)
                    ids.append(handle.job_id)
                results = await wait_for_results(producer.redis, ids, 10)
                after = await (
                    await producer.submit({"messages": [{"role": "user", "content": "ok?"}]})
                ).result(timeout=30)
        stats = provider.stats()
    summary = {job_id: (r.status, r.error.kind if r.error else None) for job_id, r in results.items()}
    print(f"\nbroken 200s: {summary}; provider requests {stats['requests']}")
    for shape in BROKEN_SHAPES:
        result = results[f"shape-{shape}"]
        assert result.status == "failed", shape
        assert result.error is not None and result.error.kind == "invalid_response", (shape, result.error)
        assert result.error.status_code == 200, shape
        assert result.attempts == 1 and len(result.errors) == 1, shape
        assert "Traceback" not in result.error.message and len(result.error.message) <= 500, shape
    assert stats["broken"] == len(BROKEN_SHAPES)
    assert stats["requests"] == len(BROKEN_SHAPES) + 1  # not one retry: each broken answer was billed once
    assert after.ok
