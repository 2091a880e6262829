"""A job chooses what to ask, never where the worker's credentials go.

A worker configured for OpenAI with ``LLM_API_KEY`` runs jobs that name an Ollama model (whose endpoint,
``OLLAMA_API_BASE``, is a listener of this test's) or set LiteLLM keyword arguments that re-route or
fake a call. Real worker processes, real Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.errors import InvalidBatchFileError, JobValidationError
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import wait_for_results, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

QUEUE = "llmqueue:queue"
OLLAMA_JOB = {"model": "ollama_chat/llama3", "messages": [{"role": "user", "content": "Wie spät ist es?"}]}


class _Listener:
    """A TCP listener that keeps every byte sent to it and closes the connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(TimeoutError):
            self.received += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()


@asynccontextmanager
async def listening() -> AsyncIterator[_Listener]:
    listener = _Listener()
    server = await asyncio.start_server(listener._handle, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


def _queue_raw(job: dict[str, object]) -> bytes:
    return json.dumps({"t": 1, "f": "run_job", "a": [job], "k": {}, "et": 0}).encode()


async def test_a_job_naming_another_provider_gets_no_credentials_unless_allowed(
    redis_url: str, tmp_path: Path
) -> None:
    async with listening() as ollama:
        env = worker_env(redis_url, "", TEST_API_KEY, llm_model="openai/gpt-4o", llm_num_retries=0)
        del env["LLM_BASE_URL"]  # the real OpenAI endpoint: only the Ollama job could reach a listener
        env["OLLAMA_API_BASE"] = f"http://127.0.0.1:{ollama.port}"
        async with Producer(
            make_settings(redis_url, "http://unused.invalid/v1", model="openai/gpt-4o")
        ) as producer:
            with pytest.raises(JobValidationError, match="served by ollama_chat"):
                await producer.submit(OLLAMA_JOB)
            redis = producer.redis
            # A producer without the workers' settings cannot tell: the worker refuses it.
            for job_id in ("refused", "allowed"):
                await redis.set(keys.arq_job(job_id), _queue_raw({**OLLAMA_JOB, "id": job_id}))
            await redis.zadd(QUEUE, {"refused": int(time.time() * 1000)})
            with worker_processes(env, tmp_path) as workers:
                await workers.start_ready(1)
                refused = (await wait_for_results(redis, ["refused"], 30))["refused"]
                assert not ollama.received
                workers.stop()
                # The operator allows Ollama models: the call goes out (the control: the listener works).
                await workers.start_ready(1, LLM_ALLOWED_MODELS='["ollama_chat/*"]')
                await redis.zadd(QUEUE, {"allowed": int(time.time() * 1000)})
                allowed = (await wait_for_results(redis, ["allowed"], 60))["allowed"]
    assert refused.status == "failed" and refused.error is not None
    assert refused.error.kind == "invalid_job" and "allowed_models" in refused.error.message
    assert allowed.error is None or allowed.error.kind != "invalid_job"
    assert b"llama3" in ollama.received  # the allowed call reached the listener: it would have seen a leak


async def test_params_that_reroute_or_fake_a_call_are_refused_by_name(redis_url: str, tmp_path: Path) -> None:
    risky = {
        "mock_response": "I never called anyone",
        "custom_llm_provider": "ollama_chat",
        "extra_headers": {"X-Forward": "elsewhere"},
        "success_callback": ["langfuse"],
        "aws_bedrock_runtime_endpoint": "http://127.0.0.1:1",
        "vertex_credentials": "{}",
    }
    chat = [{"role": "user", "content": "Bonjour"}]
    lines = [
        json.dumps({"custom_id": name, "model": "openai/sim-model", "messages": chat, name: value})
        for name, value in risky.items()
    ]
    lines.append(json.dumps({"custom_id": "fine", "messages": chat, "temperature": 0.2, "top_k": 4}))
    batch = tmp_path / "risky.jsonl"
    batch.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        settings = make_settings(redis_url, provider.base_url)
        async with Producer(settings) as producer:
            with pytest.raises(InvalidBatchFileError) as refused:
                await Batches(producer.store, settings).submit_file(batch, "risky")
            reasons = {e.line: e.reason for e in refused.value.check.errors}
            assert sorted(reasons) == list(range(1, len(risky) + 1))
            for line, name in enumerate(risky, start=1):
                assert f"params {name} may not be set by a job" in reasons[line], reasons[line]
            # Queued past the producer's check, the worker refuses it and calls nobody.
            redis = producer.redis
            job = {"id": "mocked", "messages": chat, "params": {"mock_response": "fake"}}
            await redis.set(keys.arq_job("mocked"), _queue_raw(job))
            await redis.zadd(QUEUE, {"mocked": int(time.time() * 1000)})
            env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
            with worker_processes(env, tmp_path) as workers:
                await workers.start_ready(1)
                mocked = (await wait_for_results(redis, ["mocked"], 30))["mocked"]
                fine = await (
                    await producer.submit({"messages": chat, "params": {"temperature": 0.2, "top_k": 4}})
                ).result(timeout=30)
        requests = provider.stats()["requests"]
    assert mocked.status == "failed" and mocked.error is not None
    assert mocked.error.kind == "invalid_job" and "mock_response" in mocked.error.message
    assert fine.ok
    assert requests == 1
