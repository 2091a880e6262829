"""Structured output through the Python API: a pydantic model class as response_format, ``result.parsed``."""

from __future__ import annotations

import json

from pydantic import BaseModel

from llmqueue.producer import Producer
from llmqueue.settings import Settings
from llmqueue.simulator.server import RunningProvider
from tests.support.settings import running_worker


class Verdict(BaseModel):
    answer: int


def ask(answers: list[object]) -> str:
    return f"What is six times seven?\nanswers: {json.dumps(answers)}"


async def test_a_pydantic_class_is_sent_as_its_schema_and_the_result_parsed_into_it(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    job = {
        "messages": [{"role": "user", "content": ask([{"answer": "x"}, {"answer": 42}])}],
        "params": {"response_format": Verdict},
    }
    async with running_worker(settings):
        result = await (await producer.submit(job)).result(timeout=20)
    assert result.status == "succeeded" and result.attempts == 2
    assert result.parsed == Verdict(answer=42)
    sent = provider.stats.json_conversations
    assert len(sent) == 2 and "at $.answer: 'x' is not of type 'integer'" in sent[1][2]["content"]


async def test_a_job_schema_retries_of_0_fails_at_the_first_wrong_answer(
    settings: Settings, producer: Producer, provider: RunningProvider
) -> None:
    job = {
        "messages": [{"role": "user", "content": ask(["not json"])}],
        "params": {"response_format": {"type": "json_object"}},
        "schema_retries": 0,
    }
    async with running_worker(settings):
        result = await (await producer.submit(job)).result(timeout=20)
    assert result.status == "failed" and result.attempts == 1 and result.parsed is None
    assert result.error is not None and result.error.kind == "invalid_output"
    assert "not valid JSON" in result.error.message
    assert provider.stats.requests == 1


async def test_a_dict_schema_gives_the_decoded_json_as_parsed(settings: Settings, producer: Producer) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    job = {
        "messages": [{"role": "user", "content": ask([{"answer": 7}])}],
        "params": {
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
        },
    }
    async with running_worker(settings):
        result = await (await producer.submit(job)).result(timeout=20)
    assert result.parsed == {"answer": 7}
