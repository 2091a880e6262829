"""The simulated provider, exercised through real HTTP: LiteLLM calls and raw aiohttp requests."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import asyncio
import itertools
import json
import math
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import litellm
import pytest
from pydantic import ValidationError

from llmqueue.simulator.limits import RateLimits, TokenBucket, estimate_prompt_tokens
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from llmqueue.simulator.stats import LISTS
from llmqueue.simulator.wire import embedding_vector
from tests.support.settings import TEST_API_KEY

litellm.suppress_debug_info = True

API_KEY = "sk-test"


async def chat(provider: RunningProvider, text: str = "hello", **kwargs: Any) -> Any:
    """One LiteLLM chat call to ``provider`` with retries off."""
    kwargs.setdefault("api_key", API_KEY)
    return await litellm.acompletion(
        model="openai/sim-model",
        api_base=provider.base_url,
        messages=[{"role": "user", "content": text}],
        num_retries=0,
        max_retries=0,
        **kwargs,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def chat_json(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "sim-model", "messages": [{"role": "user", "content": text}], **extra}


# --- pure limits, with a number for a clock ---


def test_token_bucket_starts_full_and_refills_at_rate() -> None:
    bucket = TokenBucket(rate_per_minute=600, window_seconds=0.5, now=0.0)  # 5 units, 10 per second
    assert bucket.capacity == 5
    bucket.take(5, now=0.0)
    assert bucket.wait_for(1, now=0.0) == pytest.approx(0.1)
    assert bucket.wait_for(1, now=0.1) == 0.0
    assert bucket.level(now=100.0) == 5


def test_token_bucket_admits_oversized_amount_only_when_full_and_goes_into_debt() -> None:
    bucket = TokenBucket(rate_per_minute=60, window_seconds=1, now=0.0)  # capacity 1, 1 per second
    assert bucket.wait_for(3, now=0.0) == 0.0
    bucket.take(3, now=0.0)
    assert bucket.level(now=0.0) == -2
    assert bucket.wait_for(3, now=0.0) == pytest.approx(3.0)


def test_rejected_request_consumes_nothing() -> None:
    limits = RateLimits(rpm=600, tpm=600, window_seconds=1, now=0.0)  # 10 requests, 10 tokens
    assert limits.admit(tokens=8, now=0.0) is None
    rejection = limits.admit(tokens=5, now=0.0)
    assert rejection is not None and rejection.kind == "tokens"
    assert rejection.wait_seconds == pytest.approx(0.3)
    assert limits.headers(now=0.0)["x-ratelimit-remaining-requests"] == "9"
    assert limits.headers(now=0.0)["x-ratelimit-remaining-tokens"] == "2"


def test_prompt_tokens_count_chars_messages_and_images() -> None:
    messages = [
        {"role": "system", "content": "12345678"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]
    assert estimate_prompt_tokens(messages) == math.ceil(12 / 4) + 2 * 3 + 85


def test_config_rejects_negative_values() -> None:
    for field in ("rpm", "tpm", "latency", "error_rate", "hang_seconds", "completion_tokens"):
        with pytest.raises(ValidationError):
            ProviderConfig(**{field: -1})


# --- over HTTP ---


async def test_chat_completion_returns_openai_shape_and_usage() -> None:
    async with run_provider(ProviderConfig()) as provider:
        response = await chat(provider, "hello world")
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == "echo: hello world"
    assert response.choices[0].finish_reason == "stop"
    prompt_tokens = math.ceil(len("hello world") / 4) + 3
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens == 16
    assert response.usage.total_tokens == prompt_tokens + 16


async def test_chat_body_has_exactly_openai_fields(session: aiohttp.ClientSession) -> None:
    async with (
        run_provider() as provider,
        session.post(f"{provider.base_url}/chat/completions", json=chat_json()) as response,
    ):
        body = await response.json()
    assert response.status == 200
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["model"] == "sim-model"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "echo: hi"}, "finish_reason": "stop"}
    ]
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


async def test_max_tokens_caps_completion_and_finishes_with_length() -> None:
    async with run_provider(ProviderConfig(completion_tokens=16)) as provider:
        response = await chat(provider, max_tokens=4)
    assert response.usage.completion_tokens == 4
    assert response.choices[0].finish_reason == "length"


async def test_content_parts_are_echoed_as_text() -> None:
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    async with run_provider() as provider:
        response = await litellm.acompletion(
            model="openai/sim-model",
            api_base=provider.base_url,
            api_key=API_KEY,
            messages=[{"role": "user", "content": content}],
            num_retries=0,
            max_retries=0,
        )
    assert response.choices[0].message.content == "echo: describe"
    assert response.usage.prompt_tokens == math.ceil(len("describe") / 4) + 3 + 85


async def test_echo_is_truncated_to_200_characters() -> None:
    async with run_provider() as provider:
        response = await chat(provider, "x" * 500)
    assert response.choices[0].message.content == "echo: " + "x" * 200


async def test_rpm_limit_raises_rate_limit_error_with_retry_after_headers() -> None:
    # 6 requests/min over a 10 s window: a bucket of one request, refilled after 10 s.
    async with run_provider(ProviderConfig(rpm=6, window_seconds=10)) as provider:
        await chat(provider)
        with pytest.raises(litellm.RateLimitError) as caught:
            await chat(provider)
        stats = provider.stats
    # LiteLLM rebuilds exc.response without the provider's headers; they are kept on litellm_response_headers.
    headers = caught.value.litellm_response_headers
    assert headers["retry-after"] == "10"
    assert 9000 < int(headers["retry-after-ms"]) <= 10000
    assert headers["x-ratelimit-limit-requests"] == "6"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+(\.\d+)?s", headers["x-ratelimit-reset-requests"])
    assert "requests per min (RPM)" in str(caught.value)
    assert (stats.succeeded, stats.rate_limited, stats.errors) == (1, 1, {429: 1})


async def test_tpm_limit_raises_rate_limit_error_naming_tokens() -> None:
    # 60 tokens/min over a 10 s window is a bucket of 10 tokens; each call costs ceil(2/4) + 3 + 1 = 5.
    async with run_provider(ProviderConfig(tpm=60, window_seconds=10, completion_tokens=1)) as provider:
        await chat(provider, "hi")
        await chat(provider, "hi")
        with pytest.raises(litellm.RateLimitError) as caught:
            await chat(provider, "hi")
        assert provider.stats.tokens_admitted == 10
    assert "tokens per min (TPM)" in str(caught.value)
    assert caught.value.litellm_response_headers["x-ratelimit-remaining-tokens"] == "0"


async def test_admitted_calls_never_exceed_the_request_rate(session: aiohttp.ClientSession) -> None:
    # 1200 rpm over 0.05 s: a bucket of one request refilled every 0.05 s.
    async with run_provider(ProviderConfig(rpm=1200, window_seconds=0.05)) as provider:
        url = f"{provider.base_url}/chat/completions"
        deadline = time.monotonic() + 0.5

        async def hammer() -> None:
            while time.monotonic() < deadline:
                async with session.post(url, json=chat_json()) as response:
                    await response.read()
                if response.status == 429:
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(hammer() for _ in range(4)))
        stats = provider.stats
    times = sorted(arrival.time for arrival in stats.arrivals)
    assert len(times) == stats.succeeded >= 5
    assert stats.rate_limited > 0
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.05 * (1 - 1e-6)


@pytest.mark.parametrize(
    ("status", "message", "exception"),
    [
        (500, None, litellm.InternalServerError),
        (502, None, litellm.BadGatewayError),
        (503, None, litellm.ServiceUnavailableError),
        (429, None, litellm.RateLimitError),
        (401, None, litellm.AuthenticationError),
        (400, None, litellm.BadRequestError),
        (400, "This model's maximum context length is 8192 tokens", litellm.ContextWindowExceededError),
    ],
)
async def test_fail_next_status_maps_to_litellm_exception(
    status: int, message: str | None, exception: type[Exception]
) -> None:
    async with run_provider() as provider:
        provider.fail_next(1, status, message=message)
        with pytest.raises(exception) as caught:
            await chat(provider)
    assert getattr(caught.value, "status_code", None) == status


async def test_fail_next_fails_count_calls_then_recovers() -> None:
    async with run_provider() as provider:
        provider.fail_next(2, 500)
        for _ in range(2):
            with pytest.raises(litellm.InternalServerError):
                await chat(provider)
        await chat(provider)
        assert provider.stats.errors == {500: 2}
        assert provider.stats.succeeded == 1


async def test_fail_next_429_sends_the_given_retry_after() -> None:
    async with run_provider() as provider:
        provider.fail_next(1, 429, retry_after=2.5)
        with pytest.raises(litellm.RateLimitError) as caught:
            await chat(provider)
    assert caught.value.litellm_response_headers["retry-after"] == "3"
    assert caught.value.litellm_response_headers["retry-after-ms"] == "2500"


async def test_wrong_api_key_raises_authentication_error() -> None:
    async with run_provider(ProviderConfig(api_key="sk-right")) as provider:
        await chat(provider, api_key="sk-right")
        with pytest.raises(litellm.AuthenticationError) as caught:
            await chat(provider, api_key="sk-wrong")
    assert caught.value.status_code == 401
    assert "sk-wrong" not in str(caught.value)


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    async with run_provider() as provider:

        async def embed(texts: list[str]) -> Any:
            return await litellm.aembedding(
                model="openai/sim-embedding", api_base=provider.base_url, api_key=API_KEY, input=texts
            )

        first = await embed(["alpha", "beta"])
        again = await embed(["alpha"])
    vectors = [item["embedding"] for item in first.data]
    assert [item["index"] for item in first.data] == [0, 1]
    assert all(len(vector) == 8 for vector in vectors)
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] != vectors[1]
    assert again.data[0]["embedding"] == pytest.approx(vectors[0])
    assert first.usage.prompt_tokens == math.ceil(5 / 4) + math.ceil(4 / 4)


async def test_embeddings_body_has_openai_shape(session: aiohttp.ClientSession) -> None:
    async with run_provider() as provider:
        request = {"model": "sim-embedding", "input": "hello", "encoding_format": "float"}
        async with session.post(f"{provider.base_url}/embeddings", json=request) as response:
            body = await response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert body["data"][0]["object"] == "embedding" and len(body["data"][0]["embedding"]) == 8
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}  # OpenAI's: no completion_tokens


async def test_embeddings_of_token_ids_are_charged_one_token_per_id(session: aiohttp.ClientSession) -> None:
    async with run_provider() as provider:
        request = {"model": "sim-embedding", "input": [[1, 2, 3], [4, 5]], "encoding_format": "float"}
        async with session.post(f"{provider.base_url}/embeddings", json=request) as response:
            body = await response.json()
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 5


async def test_malformed_chat_request_gets_400(session: aiohttp.ClientSession) -> None:
    async with (
        run_provider() as provider,
        session.post(f"{provider.base_url}/chat/completions", json={"model": "m"}) as response,
    ):
        body = await response.json()
    assert response.status == 400
    assert body["error"]["type"] == "invalid_request_error" and "messages" in body["error"]["message"]


async def test_rate_limit_for_answers_429_until_the_window_ends() -> None:
    async with run_provider() as provider:
        provider.rate_limit_for(0.3, retry_after=1)
        with pytest.raises(litellm.RateLimitError) as caught:
            await chat(provider)
        assert caught.value.litellm_response_headers["retry-after"] == "1"
        await asyncio.sleep(0.35)
        await chat(provider)


async def test_error_rate_with_seed_fails_about_that_fraction(session: aiohttp.ClientSession) -> None:
    async def failures(seed: int) -> int:
        async with run_provider(ProviderConfig(error_rate=0.3, seed=seed)) as provider:
            for _ in range(200):
                async with session.post(
                    f"{provider.base_url}/chat/completions", json=chat_json()
                ) as response:
                    await response.read()
                    assert response.status in (200, 500, 502, 503)
            return provider.stats.requests - provider.stats.succeeded

    failed = await failures(seed=7)
    assert 40 <= failed <= 80
    assert await failures(seed=7) == failed


async def test_timeout_rate_hangs_until_the_client_gives_up() -> None:
    async with run_provider(ProviderConfig(timeout_rate=1, hang_seconds=30)) as provider:
        with pytest.raises(litellm.Timeout):
            await chat(provider, timeout=0.3)
        await asyncio.sleep(0.05)  # the abandoned call's handler is cancelled
        assert (provider.stats.in_flight, provider.stats.succeeded) == (0, 0)


async def test_latency_delays_answers_and_in_flight_calls_are_counted() -> None:
    async with run_provider(ProviderConfig(latency=0.2)) as provider:
        started = time.monotonic()
        await asyncio.gather(*(chat(provider) for _ in range(3)))
        elapsed = time.monotonic() - started
        assert provider.stats.max_in_flight == 3
        assert provider.stats.in_flight == 0
    assert 0.2 <= elapsed < 1.0


async def test_control_endpoint_scripts_faults_over_http(session: aiohttp.ClientSession) -> None:
    async with run_provider() as provider:
        root = provider.base_url.removesuffix("/v1")
        command = {"action": "fail_next", "count": 1, "status": 503, "retry_after": 1}
        async with session.post(f"{root}/control", json=command) as response:
            assert response.status == 200
        async with session.post(f"{provider.base_url}/chat/completions", json=chat_json()) as response:
            body = await response.json()
            assert response.status == 503 and response.headers["retry-after"] == "1"
        assert body["error"]["type"] == "server_error"
        async with session.post(f"{root}/control", json={"action": "fail_next", "status": 200}) as response:
            assert response.status == 400


async def test_reset_clears_faults_and_counters() -> None:
    async with run_provider() as provider:
        provider.fail_next(5, 500)
        provider.rate_limit_for(60)
        with pytest.raises(litellm.InternalServerError):
            await chat(provider)
        provider.reset()
        await chat(provider)
        assert (provider.stats.requests, provider.stats.succeeded, provider.stats.errors) == (1, 1, {})


async def test_stats_health_and_models_endpoints(session: aiohttp.ClientSession) -> None:
    async with run_provider() as provider:
        root = provider.base_url.removesuffix("/v1")
        await chat(provider)
        async with session.get(f"{root}/stats") as response:
            stats = await response.json()
        async with session.get(f"{root}/health") as response:
            assert await response.json() == {"status": "ok"}
        async with session.get(f"{provider.base_url}/models") as response:
            models = await response.json()
    assert stats["requests"] == stats["succeeded"] == 1
    assert stats["arrivals"][0]["total_tokens"] == stats["tokens_admitted"]
    assert "sim-model" in [model["id"] for model in models["data"]]


async def test_stats_counts_only_leave_out_the_lists_that_grow_with_every_call(
    session: aiohttp.ClientSession,
) -> None:
    async with run_provider() as provider:
        root = provider.base_url.removesuffix("/v1")
        await chat(provider)
        async with session.get(f"{root}/stats", params={"counts_only": "1"}) as response:
            counts = await response.json()
        async with session.get(f"{root}/stats") as response:
            everything = await response.json()
    assert counts["requests"] == counts["succeeded"] == 1
    assert not LISTS & counts.keys()
    assert everything.keys() >= LISTS
    assert {k: v for k, v in everything.items() if k not in LISTS} == counts


async def test_subprocess_prints_its_port_and_answers() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmqueue",
        "simulate-provider",
        "--port",
        "0",
        "--rpm",
        "600",
        "--api-key",
        API_KEY,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        match = re.fullmatch(r"simulated provider listening on (http://127\.0\.0\.1:(\d+)/v1)\n", line)
        assert match and int(match.group(2)) > 0
        response = await litellm.acompletion(
            model="openai/sim-model",
            api_base=match.group(1),
            api_key=API_KEY,
            messages=[{"role": "user", "content": "ping"}],
            num_retries=0,
            max_retries=0,
        )
        assert response.choices[0].message.content == "echo: ping"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


# --- the key's own count, its headers, a second client (issue 11) ---


async def test_a_call_with_max_tokens_is_charged_its_prompt_plus_max_tokens_up_front() -> None:
    async with run_provider(ProviderConfig(tpm=60_000)) as provider:
        response = await chat(provider, "x" * 400, max_tokens=200)
        stats = provider.stats
    assert response.usage.completion_tokens == 16
    assert stats.tokens_admitted == 100 + 3 + 200  # chars/4 + 3 per message + max_tokens, not the 16
    assert stats.arrivals[0].total_tokens == 303


async def test_anthropic_header_family_states_limits_and_reset_times() -> None:
    config = ProviderConfig(rpm=600, tpm=60_000, rate_limit_headers="anthropic")
    async with run_provider(config) as provider:
        response = await chat(provider, "hi")
    headers = response._hidden_params["additional_headers"]
    assert headers["llm_provider-anthropic-ratelimit-requests-limit"] == "600"
    assert headers["llm_provider-anthropic-ratelimit-requests-remaining"] == "9"
    assert headers["llm_provider-anthropic-ratelimit-tokens-limit"] == "60000"
    reset = headers["llm_provider-anthropic-ratelimit-tokens-reset"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", reset)
    assert not any(name.startswith("llm_provider-x-ratelimit") for name in headers)


def test_input_and_output_limits_count_the_prompt_and_what_the_answer_produced() -> None:
    # Anthropic's way: 600 input and 120 output tokens a minute over 1 s: buckets of 10 and 2.
    limits = RateLimits(rpm=None, tpm=None, window_seconds=1, now=0.0, itpm=600, otpm=120)
    assert limits.admit(0, now=0.0, input_tokens=4, output_reserve=2, output_tokens=1) is None
    # The output bucket needs the whole reserve (max_tokens) but was charged the 1 produced.
    assert limits.headers(now=0.0, family="anthropic")["anthropic-ratelimit-output-tokens-remaining"] == "1"
    rejection = limits.admit(0, now=0.0, input_tokens=4, output_reserve=2, output_tokens=1)
    assert rejection is not None and rejection.kind == "output-tokens"
    assert limits.admit(0, now=0.0, input_tokens=4, output_reserve=1, output_tokens=1) is None
    rejection = limits.admit(0, now=0.0, input_tokens=4)  # 2 input tokens left
    assert rejection is not None and rejection.kind == "input-tokens"
    assert rejection.wait_seconds == pytest.approx(0.2)
    headers = limits.headers(now=0.0, family="anthropic")
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "600"
    assert headers["anthropic-ratelimit-output-tokens-limit"] == "120"
    # No combined token limit: "tokens" states the one with the fewest left (output: 0 of 2).
    assert headers["anthropic-ratelimit-tokens-limit"] == "120"
    assert "x-ratelimit-limit-tokens" not in limits.headers(now=0.0, family="openai")


async def test_no_rate_limit_headers_when_asked_for_none() -> None:
    async with run_provider(ProviderConfig(rpm=600, rate_limit_headers="none")) as provider:
        response = await chat(provider, "hi")
    assert not any("ratelimit" in name for name in response._hidden_params["additional_headers"])


def test_another_client_on_the_key_takes_its_share_of_the_refill() -> None:
    limits = RateLimits(rpm=600, tpm=None, window_seconds=1, now=0.0)  # 10 a second
    for _ in range(10):
        assert limits.admit(0, now=0.0) is None
    limits.share(0.5, now=0.0)
    # One second refills 5 for this client, not 10; the headers still state the whole key's limit.
    assert sum(limits.admit(0, now=1.0) is None for _ in range(10)) == 5
    assert limits.headers(now=1.0)["x-ratelimit-limit-requests"] == "600"


async def test_share_key_control_command(session: aiohttp.ClientSession) -> None:
    async with run_provider(ProviderConfig(rpm=600)) as provider:
        async with session.post(
            provider.base_url.removesuffix("/v1") + "/control", json={"action": "share_key", "share": 0.3}
        ) as response:
            assert response.status == 200
        requests = provider.provider._limits_for("sim-model").requests
        assert requests is not None
        assert requests._others == 0.3


@pytest.mark.parametrize("per_model", [False, True])
async def test_limits_per_model_give_each_model_its_own_buckets(per_model: bool) -> None:
    # A bucket of one request: a second call to the same model is refused either way; a call to another
    # model only when the key's limits are shared by all its models.
    config = ProviderConfig(rpm=6, window_seconds=10, limits_per_model=per_model)
    async with run_provider(config) as provider:
        await chat(provider)
        with pytest.raises(litellm.RateLimitError):
            await chat(provider)
        other = litellm.acompletion(
            model="openai/other-model",
            api_base=provider.base_url,
            api_key=API_KEY,
            messages=[{"role": "user", "content": "hi"}],
            num_retries=0,
            max_retries=0,
        )
        if per_model:
            await other
        else:
            with pytest.raises(litellm.RateLimitError):
                await other
        stats = provider.stats
    assert (stats.succeeded, stats.rate_limited) == ((2, 1) if per_model else (1, 2))


def test_provider_process_passes_limits_per_model_to_its_command() -> None:
    config = ProviderConfig(rpm=6, window_seconds=10, limits_per_model=True)
    with ProviderProcess(config) as provider:
        for model in ("openai/sim-model", "openai/other-model"):
            litellm.completion(
                model=model,
                api_base=provider.base_url,
                api_key=API_KEY,
                messages=[{"role": "user", "content": "hi"}],
                num_retries=0,
                max_retries=0,
            )
        stats = provider.stats()
    assert (stats["succeeded"], stats["rate_limited"]) == (2, 0)


# --- the Batch API ---


async def test_an_embeddings_batch_answers_its_lines_as_the_live_endpoint_and_refuses_other_urls(
    provider: RunningProvider, session: aiohttp.ClientSession
) -> None:
    api = provider.provider.batch_api
    api.validating_seconds = api.in_progress_seconds = 0.0  # ends at its first look
    lines = [
        {"custom_id": "v", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "sim-embedding", "input": "a red apple"}},
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": chat_json()},
    ]  # fmt: skip
    auth = {"Authorization": f"Bearer {TEST_API_KEY}"}
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", "".join(json.dumps(line) + "\n" for line in lines), filename="in.jsonl")
    async with session.post(f"{provider.base_url}/files", data=form, headers=auth) as response:
        uploaded = await response.json()
    created_json = {"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
    async with session.post(f"{provider.base_url}/batches", json=created_json, headers=auth) as response:
        assert response.status == 200, await response.text()
        created = await response.json()
    async with session.get(f"{provider.base_url}/batches/{created['id']}", headers=auth) as response:
        batch = await response.json()

    async def entries(file_id: str) -> list[dict[str, Any]]:
        async with session.get(f"{provider.base_url}/files/{file_id}/content", headers=auth) as response:
            return [json.loads(line) for line in (await response.text()).splitlines()]

    assert (batch["status"], batch["request_counts"]) == (
        "completed",
        {"total": 2, "completed": 1, "failed": 1},
    )
    (answered,) = await entries(batch["output_file_id"])
    assert answered["custom_id"] == "v"
    body = answered["response"]["body"]
    assert (body["object"], body["data"][0]["embedding"]) == ("list", embedding_vector("a red apple"))
    (refused,) = await entries(batch["error_file_id"])
    assert (refused["custom_id"], refused["response"]["status_code"]) == ("c", 400)
