"""Scenario 8: results outlive the producer that submitted them, for ``result_ttl`` (7 days by default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.producer import Producer
from llmqueue.settings import WorkerConfig
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import chat_jobs, wait_for_results, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = pytest.mark.timeout(180)

DAY = 86400


async def test_results_are_kept_for_result_ttl_and_found_by_a_new_producer(
    redis_url: str, tmp_path: Path
) -> None:
    default_ttl = WorkerConfig().result_ttl
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        settings = make_settings(redis_url, provider.base_url)
        # Submitted, then the producer goes away before any worker runs: nobody is listening any more.
        async with Producer(settings) as first:
            ok, refused = chat_jobs(2, "retained")
            # max_tokens 0: the provider answers 400, so this one ends failed.
            await first.submit_many([ok, {**refused, "params": {"max_tokens": 0}}])
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(1)
            async with Producer(settings) as second:
                await wait_for_results(second.redis, [ok["id"], refused["id"]], 60)
                fetched = [
                    await second.handle(job_id).result(timeout=10) for job_id in (ok["id"], refused["id"])
                ]
                ttls = [await second.redis.ttl(keys.result(job_id)) for job_id in (ok["id"], refused["id"])]
                done_ttl = await second.redis.ttl(keys.done(ok["id"]))
                leftovers = [
                    await second.redis.exists(keys.state(ok["id"]), keys.attempt_errors(refused["id"]))
                ]

    print(
        f"\nretention: results fetched by a second producer after the first closed: "
        f"{[r.status for r in fetched]}; result key TTLs {ttls} s (result_ttl {default_ttl:g} s = "
        f"{default_ttl / DAY:g} days), done-list TTL {done_ttl} s"
    )
    assert [r.status for r in fetched] == ["succeeded", "failed"]
    assert fetched[1].error is not None and "max_tokens" in fetched[1].error.message
    assert all(default_ttl - 60 <= ttl <= default_ttl for ttl in ttls)
    assert min(ttls) >= DAY
    assert default_ttl - 60 <= done_ttl <= default_ttl
    assert leftovers == [0]  # running state and attempt errors go once the result is stored
