"""The worker's path against a real Redis and the simulated provider, through real LiteLLM calls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from llmqueue import keys
from llmqueue.limits.limiter import Reservation
from llmqueue.llm.backoff import RetryPolicy
from llmqueue.producer import Producer
from llmqueue.queue.payload import serialize
from llmqueue.queue.slots import Slots
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings, WorkerConfig
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


async def test_job_succeeds_with_response_usage_and_timings(settings: Settings, producer: Producer) -> None:
    async with running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=10)
    assert result.status == "succeeded"
    assert result.text == "echo: hello"
    assert result.usage is not None and result.usage.total_tokens > 0
    assert result.attempts == 1 and result.errors == []
    assert result.worker_id and result.model == "openai/sim-model"
    assert result.timings.started_at is not None
    assert result.timings.queued_at <= result.timings.started_at <= result.timings.finished_at


async def test_rate_limited_job_is_reenqueued_with_policy_delays(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    provider.fail_next(3, 429)
    policy = RetryPolicy.from_llm(settings.llm)
    async with running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=10)
    assert result.status == "succeeded"
    assert result.attempts == 4
    assert [e.kind for e in result.errors] == ["rate_limit"] * 3
    assert [e.retry_in for e in result.errors] == [policy.delay(n) for n in (1, 2, 3)]
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(result.errors, result.errors[1:], strict=False)]
    for gap, error in zip(gaps, result.errors, strict=False):
        assert gap >= error.retry_in * 0.9  # re-enqueued with the delay, not retried at once


@pytest.mark.parametrize("job", [CHAT, {"kind": "embedding", "input": ["hello"]}], ids=["chat", "embedding"])
async def test_a_429_is_one_provider_request_and_the_job_goes_back_to_the_queue(
    settings: Settings, producer: Producer, provider: RunningProvider, job: dict[str, Any]
) -> None:
    # LiteLLM turns an embedding call's max_retries=0 into its default of 2 for the OpenAI SDK
    # (BerriAI/litellm#7003): the SDK would then sleep out the retry-after inside the worker's slot and
    # send requests the limiter never admitted.
    provider.fail_next(1, 429, retry_after=0.3)
    async with running_worker(settings):
        result = await (await producer.submit(job)).result(timeout=10)
    assert result.status == "succeeded"
    assert result.attempts == 2 and [e.kind for e in result.errors] == ["rate_limit"]
    assert (provider.stats.requests, provider.stats.rate_limited) == (2, 1)


async def test_a_provider_error_leaves_no_litellm_banner_in_the_workers_output(
    settings: Settings, producer: Producer, provider: RunningProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    # LiteLLM prints a "Give Feedback / Get Help" banner for every error it maps, on stdout: in a
    # worker's log, two lines of it per 429 buried the worker's own lines.
    provider.fail_next(2, 429, retry_after=0.1)
    async with running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=10)
    assert result.attempts == 3
    printed = capsys.readouterr()
    assert "Give Feedback" not in printed.out + printed.err
    assert "turn_on_debug" not in printed.out + printed.err


async def test_retry_after_raises_delay_and_sets_a_shared_cooldown(
    settings: Settings, producer: Producer, provider: RunningProvider, redis: Redis
) -> None:
    provider.fail_next(1, 429, retry_after=0.3)
    async with running_worker(settings):
        handle = await producer.submit(CHAT)
        result = await handle.result(timeout=10)
    assert result.errors[0].retry_in == pytest.approx(0.3)
    cooldown_end = float(await redis.hget(keys.limiter("openai/sim-model"), "cool"))
    assert cooldown_end > 0


async def test_exhausted_retries_end_in_a_failed_result(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    provider.fail_next(100, 503)
    async with running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=15)
    assert result.status == "failed"
    assert result.attempts == settings.llm.num_retries + 1
    assert len(result.errors) == settings.llm.num_retries + 1
    assert {e.kind for e in result.errors} == {"server_error"}
    assert provider.stats.requests == settings.llm.num_retries + 1


async def test_transient_error_then_success(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    provider.fail_next(1, 500)
    async with running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=10)
    assert result.status == "succeeded" and result.attempts == 2
    assert result.errors[0].kind == "server_error" and result.errors[0].status_code == 500


async def test_auth_error_fails_at_once_with_message_and_no_key(redis_url: str) -> None:
    async with run_provider(ProviderConfig(api_key="sk-the-right-key-000")) as other:
        settings = make_settings(redis_url, other.base_url)
        async with Producer(settings) as producer, running_worker(settings):
            result = await (await producer.submit(CHAT)).result(timeout=10)
        assert other.stats.requests == 1
    assert result.status == "failed" and result.attempts == 1
    assert result.error is not None and result.error.kind == "auth" and result.error.status_code == 401
    assert TEST_API_KEY not in result.model_dump_json()


async def test_permanent_bad_request_keeps_provider_message(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    provider.fail_next(1, 400, message="This model's maximum context length is 8192 tokens")
    async with running_worker(settings):
        result = await (await producer.submit(CHAT)).result(timeout=10)
    assert result.status == "failed" and result.attempts == 1
    assert result.error is not None and "maximum context length" in result.error.message


async def test_call_timeout_is_a_transient_error(redis_url: str) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, timeout_rate=1.0, hang_seconds=5)) as slow:
        settings = make_settings(redis_url, slow.base_url, timeout=0.3, num_retries=1)
        async with Producer(settings) as producer, running_worker(settings):
            result = await (await producer.submit(CHAT)).result(timeout=15)
    assert result.status == "failed" and result.attempts == 2
    assert {e.kind for e in result.errors} == {"timeout"}


async def test_the_result_is_delivered_before_the_limiter_hears_of_the_answer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, rpm=600)) as limited:
        settings = make_settings(redis_url, limited.base_url)
        async with Producer(settings) as producer, running_worker(settings):
            await (await producer.submit(CHAT)).result(timeout=30)  # start-up and first call done
            answered, reported = Reservation.answered, []

            async def slow_answered(self: Reservation, *args: Any, **kwargs: Any) -> Any:
                await asyncio.sleep(2.0)
                learnt = await answered(self, *args, **kwargs)
                reported.append(learnt)
                return learnt

            monkeypatch.setattr(Reservation, "answered", slow_answered)
            began = time.monotonic()
            result = await (await producer.submit(CHAT)).result(timeout=30)
            waited = time.monotonic() - began
            # The worker has stopped, and on its way out sent the report it still owed.
    assert result.status == "succeeded" and waited < 2.0, waited
    assert len(reported) == 1 and reported[0].rpm == 600


async def test_a_job_whose_retries_are_spent_is_sent_to_its_fallback_model(redis_url: str) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as flaky:
        settings = make_settings(redis_url, flaky.base_url, num_retries=0)
        settings = settings.model_copy(update={"fallbacks": {"openai/sim-model": ["openai/sim-backup"]}})
        flaky.fail_next(1, 503)
        async with Producer(settings) as producer, running_worker(settings):
            result = await (await producer.submit(CHAT)).result(timeout=30)
    assert result.status == "succeeded" and result.model == "openai/sim-backup"
    assert result.response is not None and result.response["model"] == "sim-backup"  # not sim-model again


async def test_duplicate_job_id_runs_once(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    job = {**CHAT, "id": "same-id"}
    async with running_worker(settings):
        first = await producer.submit(job)
        second = await producer.submit(job)
        await first.result(timeout=10)
        await second.result(timeout=10)
        again = await producer.submit(job)
        await again.result(timeout=10)
    assert provider.stats.requests == 1


async def test_limiter_redefer_is_not_counted_as_an_attempt(
    redis_url: str, provider: RunningProvider
) -> None:
    # One request per second with no inline waiting: the second job must be re-deferred at least once.
    settings = make_settings(
        redis_url, provider.base_url, rpm=60, worker={"max_inline_wait": 0.0, "poll_delay": 0.01}
    )
    async with Producer(settings) as producer, running_worker(settings):
        handles = await producer.submit_many([CHAT, CHAT])
        results = [await h.result(timeout=10) for h in handles]
    assert [r.attempts for r in results] == [1, 1]
    assert provider.stats.rate_limited == 0


async def test_a_job_starts_without_a_transaction_of_its_own(
    settings: Settings, producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # arq's run_job opens every job with a MULTI (payload, try count, abort mark); the claim reads them.
    transactions = 0
    execute = Pipeline._execute_transaction

    async def counted(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return await execute(self, *args, **kwargs)

    handles = await producer.submit_many([CHAT] * 30)
    monkeypatch.setattr(Pipeline, "_execute_transaction", counted)
    async with running_worker(settings):
        results = [await handle.result(timeout=20) for handle in handles]
    assert [r.status for r in results] == ["succeeded"] * 30
    assert transactions < 5, f"{transactions} transactions for 30 jobs"


async def test_a_job_whose_payload_expired_leaves_the_queue_and_the_worker_goes_on(
    settings: Settings, producer: Producer, redis: Redis
) -> None:
    gone = await producer.submit(CHAT)
    await redis.delete(keys.arq_job(gone.job_id))
    async with running_worker(settings):
        good = await (await producer.submit(CHAT)).result(timeout=10)
        for _ in range(100):
            if await redis.zscore(settings.worker.queue_name, gone.job_id) is None:
                break
            await asyncio.sleep(0.05)
    assert good.status == "succeeded"
    assert await redis.zscore(settings.worker.queue_name, gone.job_id) is None


@pytest.mark.parametrize(
    "provider_limits", [{}, {"rpm": 600_000, "tpm": 100_000_000}], ids=["no-limit-headers", "limit-headers"]
)
async def test_jobs_refused_while_a_new_scope_probes_wait_in_place_for_its_first_answer(
    redis_url: str, provider_limits: dict[str, float]
) -> None:
    # Nothing is known of the scope: the limiter lets two calls out to read the provider's answer and
    # refuses the rest until one is back. They wait for it in their slots, not re-deferred for 0.2 s.
    config = ProviderConfig(api_key=TEST_API_KEY, latency=0.05, **provider_limits)
    async with run_provider(config) as provider:
        settings = make_settings(redis_url, provider.base_url)
        async with Producer(settings) as producer, running_worker(settings) as worker:
            handles = await producer.submit_many([CHAT] * 20)
            results = [await handle.result(timeout=20) for handle in handles]
            deferred = worker.counter.counts.deferred
    assert [r.status for r in results] == ["succeeded"] * 20
    assert deferred == 0, f"{deferred} jobs were re-deferred while the scope probed"
    assert provider.stats.requests == 20


async def test_undecodable_payload_gets_a_failed_result_and_worker_keeps_running(
    settings: Settings, producer: Producer, redis: Redis
) -> None:
    queue = settings.worker.queue_name
    now_ms = int(time.time() * 1000)
    await redis.set(keys.arq_job("garbage"), b"\x80\x04not json at all")
    await redis.zadd(queue, {"garbage": now_ms})
    wrong_shape = serialize({"t": None, "f": "run_job", "a": [{"messages": "nope"}], "k": {}, "et": now_ms})
    await redis.set(keys.arq_job("wrong-shape"), wrong_shape)
    await redis.zadd(queue, {"wrong-shape": now_ms})
    async with running_worker(settings):
        bad = await producer.handle("garbage").result(timeout=10)
        wrong = await producer.handle("wrong-shape").result(timeout=10)
        good = await (await producer.submit(CHAT)).result(timeout=10)
    assert bad.status == "failed" and bad.errors[0].kind == "invalid_job"
    assert "not JSON" in bad.errors[0].message
    assert wrong.status == "failed" and "messages" in wrong.errors[0].message
    assert good.status == "succeeded"


async def test_result_of_job_from_another_producer_is_awaited_by_id(settings: Settings) -> None:
    async with Producer(settings) as submitter:
        handle = await submitter.submit(CHAT)
    async with Producer(settings) as other, running_worker(settings):
        result = await other.handle(handle.job_id).result(timeout=10)
    assert result.status == "succeeded"


async def test_as_completed_yields_every_result_once(settings: Settings, producer: Producer) -> None:
    jobs = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(30)]
    async with running_worker(settings):
        handles = await producer.submit_many(jobs)
        results = [r async for r in producer.as_completed(handles, timeout=20)]
    assert sorted(r.job_id for r in results) == sorted(h.job_id for h in handles)
    assert all(r.ok for r in results)


async def test_api_key_never_stored_in_redis(
    settings: Settings, producer: Producer, provider: RunningProvider, redis: Redis
) -> None:
    provider.fail_next(1, 401)
    async with running_worker(settings):
        await (await producer.submit(CHAT)).result(timeout=10)
        await (await producer.submit(CHAT)).result(timeout=10)
    for key in await redis.keys("*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            values = [await redis.get(key)]
        elif kind == "list":
            values = await redis.lrange(key, 0, -1)
        elif kind == "hash":
            values = list((await redis.hgetall(key)).values())
        elif kind == "zset":
            values = [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        for value in [key, *values]:
            assert TEST_API_KEY.encode() not in value


async def test_result_times_out_with_a_clear_error(producer: Producer) -> None:
    from llmqueue.errors import ResultTimeoutError

    handle = await producer.submit(CHAT)  # no worker running
    with pytest.raises(ResultTimeoutError, match=handle.job_id):
        await handle.result(timeout=0.2)


async def test_job_expiry_covers_the_configured_ttl(
    settings: Settings, producer: Producer, redis: Redis
) -> None:
    handle = await producer.submit(CHAT)
    ttl = await redis.pttl(keys.arq_job(handle.job_id))
    assert ttl > (settings.worker.job_ttl - 5) * 1000


async def test_store_keeps_results_for_result_ttl(
    settings: Settings, producer: Producer, redis: Redis
) -> None:
    async with running_worker(settings):
        handle = await producer.submit(CHAT)
        await handle.result(timeout=10)
    assert await redis.ttl(keys.result(handle.job_id)) > settings.worker.result_ttl - 5
    store = JobStore(redis, queue_name="q", job_ttl=60, result_ttl=60)
    assert (await store.get_results([handle.job_id, "missing"]))[1] is None


async def test_many_jobs_are_submitted_in_pipelined_round_trips(producer: Producer) -> None:
    started = time.perf_counter()
    handles = await producer.submit_many([CHAT] * 2000)
    elapsed = time.perf_counter() - started
    assert len({h.job_id for h in handles}) == 2000
    assert await producer.redis.zcard(producer.settings.worker.queue_name) == 2000
    print(f"submit_many: 2000 jobs in {elapsed:.3f}s ({2000 / elapsed:.0f} jobs/s)")


async def test_waiting_for_a_result_does_not_poll(settings: Settings, producer: Producer) -> None:
    async with running_worker(settings):
        await (await producer.submit(CHAT)).result(timeout=10)  # warm up
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            await (await producer.submit(CHAT)).result(timeout=10)
            latencies.append(time.perf_counter() - started)
    print(f"submit→result latencies: {[round(x * 1000, 1) for x in latencies]} ms")
    # Not a benchmark: a poll of arq's default 0.5 s would show up as ≥ 0.5 s on every call.
    assert min(latencies) < 0.5
    await asyncio.sleep(0)


async def test_job_naming_an_llm_config_group_uses_its_model_and_endpoint(
    redis_url: str, provider: RunningProvider
) -> None:
    async with run_provider(ProviderConfig(api_key="sk-group-key-123456")) as other:
        settings = make_settings(redis_url, provider.base_url)
        settings.llm_groups["other"] = {"model": "openai/other-model", "base_url": other.base_url}
        settings.llm_groups["other"]["api_key"] = "sk-group-key-123456"
        async with Producer(settings) as producer, running_worker(settings):
            result = await (await producer.submit({**CHAT, "llm_config": "other"})).result(timeout=10)
        assert other.stats.requests == 1
    assert result.status == "succeeded" and result.model == "openai/other-model"
    assert provider.stats.requests == 0


async def test_unknown_llm_config_group_fails_the_job_clearly(settings: Settings, producer: Producer) -> None:
    async with running_worker(settings):
        result = await (await producer.submit({**CHAT, "llm_config": "nope"})).result(timeout=10)
    assert result.status == "failed" and result.errors[0].kind == "invalid_job"
    assert "unknown llm_config group 'nope'" in result.errors[0].message


async def test_claim_failing_on_a_redis_error_keeps_the_worker_and_its_job_slots(redis_url: str) -> None:
    # A connection lost during the claim script (Redis restarting) must neither end the worker nor
    # take a job slot: the claim takes slots only for the jobs it returned.
    provider_config = ProviderConfig(api_key=TEST_API_KEY)
    async with run_provider(provider_config) as provider:
        settings = make_settings(redis_url, provider.base_url, worker={"max_jobs": 2})
        async with running_worker(settings) as worker, Producer(settings) as producer:
            while worker.job_loop is None:  # the worker connects as it starts
                await asyncio.sleep(0.01)
            ready = worker.job_loop.ready
            real_claim = ready.claim
            failures = 3

            async def claim_losing_connection(count: int, *, low_priority_limit: int) -> Any:
                nonlocal failures
                if failures > 0:
                    failures -= 1
                    raise RedisConnectionError("Connection closed by server.")
                return await real_claim(count, low_priority_limit=low_priority_limit)

            ready.claim = claim_losing_connection  # type: ignore[method-assign]
            handles = await producer.submit_many([CHAT] * 4)
            results = [await handle.result(timeout=20) for handle in handles]
            assert failures == 0
            assert all(result.status == "succeeded" for result in results)
            deadline = time.monotonic() + 5
            slots = worker.job_loop.slots
            while slots.running != 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert slots.running == 0 and slots.low_running == 0


def test_a_deferred_batch_job_caps_the_workers_batch_jobs_and_each_end_raises_it() -> None:
    slots = Slots(max_jobs=20, reserved=WorkerConfig(max_jobs=20).slots_reserved())
    assert slots.reserved == 2 and slots.low_cap is None and slots.low_free == 18  # all unreserved slots
    for _ in range(6):
        slots.take(low=True)
    slots.give_back(low=True, deferred=True)  # one of the six came back from the limiter
    assert slots.low_cap == 5 and slots.low_running == 5 and slots.low_free == 0
    for expected in (6, 7):
        slots.adapt_low_cap(deferred=False)
        assert slots.low_cap == expected
    slots.low_cap = 17
    slots.give_back(low=True, deferred=False)
    assert slots.low_cap is None  # back to every unreserved slot
    assert slots.running == 4 and slots.free == 16
