"""The output file of ``llmqueue run`` is OpenAI's Batch output: what the provider answered, as it
answered it, with llmqueue's own fields under ``llmqueue``."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

REFUSAL = "max_tokens is too large: 999999. This model supports at most 16384 completion tokens."


def test_the_output_holds_the_providers_bodies_and_request_ids(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "chat-1", "messages": [{"role": "user", "content": "one"}]},
        {"custom_id": "chat-2", "messages": [{"role": "user", "content": "two"}]},
        {"custom_id": "vector", "model": "openai/sim-embedding", "input": "three"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        provider.control("fail_next", count=1, status=400, message=REFUSAL)
        env = clean_env(
            LLM_MODEL="openai/sim-model", LLM_BASE_URL=provider.base_url, LLM_API_KEY=TEST_API_KEY
        )
        args = ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1", "--concurrency", "1"]
        done = llmqueue_cli(args, env, tmp_path)
        stats = provider.stats()

    assert done.returncode == 1, done.stderr
    assert stats["requests"] == 3
    records = {r["custom_id"]: r for r in read_jsonl(output)}
    (failed,) = [r for r in records.values() if r["llmqueue"]["status"] == "failed"]
    # The provider's 400, as OpenAI's Batch output has it: a response, with its body unchanged.
    assert failed["error"] is None
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"] == {
        "error": {"message": REFUSAL, "type": "invalid_request_error", "param": None, "code": None}
    }
    request_ids = [r["response"]["request_id"] for r in records.values()]
    assert sorted(request_ids) == ["req_sim_1", "req_sim_2", "req_sim_3"]
    for record in records.values():
        assert record["llmqueue"]["job_id"].endswith(f":{lines.index(_line(lines, record)) + 1:08d}")
        if record is failed:
            continue
        body = record["response"]["body"]
        if record["custom_id"] == "vector":
            assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
            assert set(body) == {"object", "data", "model", "usage"}
        else:
            assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
            (choice,) = body["choices"]
            assert choice == {"index": 0, "finish_reason": "stop", "message": choice["message"]}
            assert set(choice["message"]) == {"role", "content"}
            assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def _line(lines: list[dict[str, object]], record: dict[str, object]) -> dict[str, object]:
    return next(line for line in lines if line["custom_id"] == record["custom_id"])
