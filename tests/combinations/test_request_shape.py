"""What a request looks like where two settings meet: ``disable_vision`` with an image-only message, and
prompt-caching marks (``caching_prompt``) with a custom endpoint or a model LiteLLM does not know.

Jobs go through the Python API (a Producer and a worker in this loop) to the simulated provider, which
counts the requests it got and those that carried ``cache_control`` marks.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from llmqueue.errors import JobValidationError
from llmqueue.llm import request
from llmqueue.producer import Producer
from llmqueue.settings import LLMConfig, Settings, WorkerConfig
from llmqueue.simulator.server import RunningProvider
from tests.support.settings import make_settings, running_worker

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
IMAGE_ONLY = [{"role": "user", "content": [IMAGE]}]
WITH_TEXT = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    request._say_unmarked.cache_clear()  # each test sees its own first warning


async def test_an_image_only_message_without_vision_fails_before_any_request(
    redis_url: str, provider: RunningProvider
) -> None:
    # The producer knows nothing of the workers' settings; the worker has vision off.
    producer_settings = Settings(redis_url=redis_url, worker=WorkerConfig(poll_delay=0.01))
    worker_settings = make_settings(redis_url, provider.base_url, disable_vision=True)
    async with Producer(producer_settings) as producer, running_worker(worker_settings):
        image_only = await producer.submit({"messages": IMAGE_ONLY})
        with_text = await producer.submit({"messages": WITH_TEXT})
        refused, answered = await image_only.result(timeout=20), await with_text.result(timeout=20)

    assert refused.status == "failed" and refused.attempts == 0
    assert refused.errors[-1].kind == "invalid_job"
    assert "message 1 holds only images" in refused.errors[-1].message
    assert answered.status == "succeeded"
    assert provider.stats.requests == 1  # the job with text only


async def test_a_producer_with_the_workers_settings_refuses_it_at_submission(
    redis_url: str, provider: RunningProvider
) -> None:
    settings = make_settings(redis_url, provider.base_url, disable_vision=True)
    async with Producer(settings) as producer:
        with pytest.raises(JobValidationError, match="disable_vision"):
            await producer.submit({"messages": IMAGE_ONLY})
    assert provider.stats.requests == 0


async def run_three(settings: Settings) -> None:
    async with Producer(settings) as producer, running_worker(settings):
        handles = [
            await producer.submit(
                {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": f"q{n}"},
                    ]
                }
            )
            for n in range(3)
        ]
        assert [(await h.result(timeout=20)).status for h in handles] == ["succeeded"] * 3


def unmarked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "gets no prompt-caching marks" in r.getMessage()]


async def test_a_custom_base_url_gets_no_cache_marks_and_says_so_once(
    redis_url: str, provider: RunningProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # gpt-4o is a model LiteLLM lists as caching, but its calls go to an OpenAI-compatible endpoint.
    settings = make_settings(redis_url, provider.base_url, model="openai/gpt-4o")
    with caplog.at_level(logging.WARNING, logger="llmqueue"):
        await run_three(settings)

    assert provider.stats.requests == 3
    assert provider.stats.cache_marked == 0
    (warning,) = unmarked_warnings(caplog)
    assert provider.base_url in warning and "openai/gpt-4o" in warning


async def test_a_model_litellm_does_not_know_gets_no_marks_with_a_warning(
    provider: RunningProvider, caplog: pytest.LogCaptureFixture
) -> None:
    llm = LLMConfig(model="openai/my-finetune-xyz")
    with caplog.at_level(logging.WARNING, logger="llmqueue"):
        for _ in range(3):
            request.call_kwargs(job(), llm, supports_caching=False)
    (warning,) = unmarked_warnings(caplog)
    assert "openai/my-finetune-xyz" in warning and "does not list it" in warning


def test_the_providers_own_endpoint_gets_marks_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    llm = LLMConfig(model="anthropic/claude-sonnet-4-5", api_key="sk-ant")
    with caplog.at_level(logging.WARNING, logger="llmqueue"):
        sent = request.call_kwargs(job(), llm, supports_caching=True)
    assert sent["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert unmarked_warnings(caplog) == []
    off = LLMConfig(model="openai/my-finetune-xyz", caching_prompt=False)
    with caplog.at_level(logging.WARNING, logger="llmqueue"):
        request.call_kwargs(job(), off, supports_caching=False)
    assert unmarked_warnings(caplog) == []


def job() -> Any:
    from llmqueue.models import Job

    return Job.parse(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    )
