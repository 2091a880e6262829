"""The cache key: what the provider sees counts, how the job travels does not."""

from __future__ import annotations

from llmqueue.cache import request_key
from llmqueue.llm.request import call_kwargs
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

LLM = LLMConfig(model="openai/gpt-4o-mini", api_key="sk-secret-1", base_url="https://api.example.com/v1")


def key_of(job: Job, llm: LLMConfig = LLM) -> str:
    return request_key(job.kind, call_kwargs(job, llm, supports_caching=False))


def chat(**fields: object) -> Job:
    data: dict[str, object] = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Classify: 'the soup was cold'"}],
        "params": {"temperature": 0, "max_tokens": 5},
    }
    data.update(fields)
    return Job.model_validate(data)


def test_same_request_from_two_batches_with_other_custom_ids_has_one_key() -> None:
    first = chat(id="evals-1:00000007", batch_id="evals-1", metadata={"custom_id": "review-7", "line": 7})
    second = chat(id="evals-2:00000001", batch_id="evals-2", metadata={"custom_id": "r1", "line": 1})
    assert key_of(first) == key_of(second)


def test_parameter_order_does_not_matter() -> None:
    assert key_of(chat(params={"temperature": 0, "max_tokens": 5})) == key_of(
        chat(params={"max_tokens": 5, "temperature": 0})
    )


def test_a_changed_parameter_misses() -> None:
    assert key_of(chat()) != key_of(chat(params={"temperature": 0.7, "max_tokens": 5}))
    assert key_of(chat()) != key_of(chat(params={"temperature": 0, "max_tokens": 6}))
    assert key_of(chat()) != key_of(chat(params={"temperature": 0, "max_tokens": 5, "seed": 1}))


def test_a_changed_message_or_model_misses() -> None:
    assert key_of(chat()) != key_of(chat(messages=[{"role": "user", "content": "Classify: 'great soup'"}]))
    assert key_of(chat()) != key_of(chat(model="openai/gpt-4o"))


def test_the_model_is_the_one_resolved_from_settings() -> None:
    unnamed = chat(model=None)
    named = chat(model="openai/gpt-4o-mini")
    assert key_of(unnamed) == key_of(named)
    assert key_of(unnamed, LLM.model_copy(update={"model": "openai/gpt-4o"})) != key_of(named)


def test_another_endpoint_misses_but_another_key_or_timeout_does_not() -> None:
    other_key = LLM.model_copy(update={"timeout": 30.0, "num_retries": 9})
    other_key.api_key = "sk-secret-2"  # type: ignore[assignment]
    assert key_of(chat(), other_key) == key_of(chat())
    elsewhere = LLM.model_copy(update={"base_url": "http://127.0.0.1:8900/v1"})
    assert key_of(chat(), elsewhere) != key_of(chat())


def test_chat_and_embedding_of_the_same_text_differ() -> None:
    embed = Job(kind="embedding", model="openai/gpt-4o-mini", input="the soup was cold")
    assert key_of(embed) != key_of(chat(messages=[{"role": "user", "content": "the soup was cold"}]))
