"""Structured output end to end: ``llmqueue run`` of a file asking for a json_schema, against the simulated
provider, which answers as each line's ``answers:`` script says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
WRONG = {"answer": "forty-two"}
RIGHT = {"answer": 42}


def line(custom_id: str, answers: list[Any]) -> dict[str, Any]:
    prompt = f"What is six times seven?\nanswers: {json.dumps(answers)}"
    return {
        "custom_id": custom_id,
        "messages": [{"role": "user", "content": prompt}],
        "response_format": RESPONSE_FORMAT,
    }


def test_answers_are_validated_and_reasked_until_valid_or_schema_retries_are_spent(tmp_path: Path) -> None:
    lines = [line("right", [RIGHT]), line("wrong-once", [WRONG, RIGHT]), line("never", [WRONG])]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = clean_env(
            LLM_MODEL="openai/sim-model",
            LLM_BASE_URL=provider.base_url,
            LLM_API_KEY=TEST_API_KEY,
            LLM_SCHEMA_RETRIES="2",
        )
        args = ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1", "--concurrency", "1"]
        done = llmqueue_cli(args, env, tmp_path)
        stats = provider.stats()

    assert done.returncode == 1, done.stderr  # one line failed
    records = {r["custom_id"]: r for r in read_jsonl(output)}
    by_prompt: dict[str, list[list[dict[str, Any]]]] = {}
    for conversation in stats["json_conversations"]:
        by_prompt.setdefault(conversation[0]["content"], []).append(conversation)
    conversations = {r["custom_id"]: by_prompt[r["messages"][0]["content"]] for r in lines}

    # Right the first time: one request, the answer as given.
    right = records["right"]
    assert len(conversations["right"]) == 1
    assert right["llmqueue"]["status"] == "succeeded" and right["llmqueue"]["attempts"] == 1
    assert json.loads(right["response"]["body"]["choices"][0]["message"]["content"]) == RIGHT

    # Wrong once: re-asked with the wrong answer and the error in the conversation, then valid.
    first, second = conversations["wrong-once"]
    assert len(first) == 1
    assert second[1] == {"role": "assistant", "content": json.dumps(WRONG)}
    assert second[2]["role"] == "user"
    assert "at $.answer: 'forty-two' is not of type 'integer'" in second[2]["content"]
    wrong_once = records["wrong-once"]
    assert wrong_once["llmqueue"]["status"] == "succeeded" and wrong_once["llmqueue"]["attempts"] == 2
    assert json.loads(wrong_once["response"]["body"]["choices"][0]["message"]["content"]) == RIGHT
    one_call = right["llmqueue"]["usage"]["prompt_tokens"]
    assert wrong_once["llmqueue"]["usage"]["prompt_tokens"] > 2 * one_call - 5  # both calls' tokens

    # Never right: schema_retries + 1 requests, then an error line naming the schema problem and where.
    assert len(conversations["never"]) == 3
    assert len(conversations["never"][2]) == 5  # the question, then two re-asks of two messages each
    never = records["never"]
    assert never["llmqueue"]["status"] == "failed" and never["llmqueue"]["attempts"] == 3
    assert never["response"] is None
    assert never["error"]["code"] == "invalid_output"
    assert never["error"]["message"] == (
        "the answer does not match schema 'answer' at $.answer: 'forty-two' is not of type 'integer' "
        "(after 3 answer(s))"
    )
    assert stats["requests"] == 1 + 2 + 3


def test_a_reask_the_batch_budget_has_no_room_for_is_not_made(tmp_path: Path) -> None:
    # The first answer (about $0.00001 at gpt-4o-mini's price) spends the batch's budget: the wrong
    # answer is not asked again (each re-ask is a paid request), and the line says why it stopped.
    source = write_jsonl(tmp_path / "in.jsonl", [line("never", [WRONG])])
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = clean_env(
            LLM_MODEL="openai/gpt-4o-mini",
            LLM_BASE_URL=provider.base_url,
            LLM_API_KEY=TEST_API_KEY,
            LLM_SCHEMA_RETRIES="2",
        )
        args = [
            "run",
            str(source),
            "-o",
            str(output),
            "--no-cache",
            "--workers",
            "1",
            "--max-cost",
            "0.000005",
        ]
        done = llmqueue_cli(args, env, tmp_path)
        stats = provider.stats()

    (record,) = read_jsonl(output)
    assert stats["requests"] == 1, done.stderr
    assert record["llmqueue"]["status"] == "failed", record
    assert record["error"]["code"] == "budget_exceeded"
    assert "not asked again for a valid answer" in record["error"]["message"]
    assert record["llmqueue"]["cost"] > 0.000005  # the answer it has is paid and counted
