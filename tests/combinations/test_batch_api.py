"""``llmqueue run --via batch-api`` with the features users combine with it: embedding lines next to chat
lines, and the response cache. What reached the simulated provider is read from its ``/stats``: the
provider batches it was sent (endpoint, the custom ids of their input file) and its live requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from llmqueue.simulator.wire import embedding_vector
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

EMBEDDING_BATCH_PRICE = 1e-8  # text-embedding-3-small per token through the Batch API, LiteLLM's table


def batch_api_run(provider: ProviderProcess, source: Path, output: Path, *extra: str) -> Any:
    env = clean_env(LLM_MODEL="openai/gpt-4o-mini", LLM_BASE_URL=provider.base_url, LLM_API_KEY=TEST_API_KEY)
    args = ["run", str(source), "-o", str(output), "--via", "batch-api", "--poll-interval", "0.2", *extra]
    return llmqueue_cli(args, env, source.parent)


def sent_batches(stats: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """(endpoint, the input line numbers in its file) of each provider batch, in the order they were
    created: the provider sees job ids (``BATCH:00000002`` for line 2) as custom ids."""
    return [
        (batch["endpoint"], [int(job_id.rsplit(":", 1)[1]) for job_id in batch["custom_ids"]])
        for batch in stats["batches"]
    ]


def test_embedding_lines_go_through_the_batch_apis_embeddings_endpoint(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "chat", "messages": [{"role": "user", "content": "hello"}]},
        {"custom_id": "named", "model": "openai/text-embedding-3-small", "input": "a red apple"},
        {
            "custom_id": "full",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "a green pear"},
        },
        {"custom_id": "default", "input": "a yellow banana"},  # [llm] embedding_model
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        done = batch_api_run(provider, source, output, "--no-cache")
        stats = provider.stats()

    assert done.returncode == 0, done.stderr
    assert stats["requests"] == 0  # nothing went live
    assert sorted(sent_batches(stats)) == [
        ("/v1/chat/completions", [1]),
        ("/v1/embeddings", [2, 3, 4]),
    ]
    records = {r["custom_id"]: r for r in read_jsonl(output)}
    assert list(records) == ["chat", "named", "full", "default"]
    assert {r["llmqueue"]["via"] for r in records.values()} == {"batch-api"}
    texts = {"named": "a red apple", "full": "a green pear", "default": "a yellow banana"}
    for custom_id, text in texts.items():
        record = records[custom_id]
        assert record["error"] is None and record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert (body["object"], body["model"]) == ("list", "text-embedding-3-small")
        assert body["data"] == [{"object": "embedding", "index": 0, "embedding": embedding_vector(text)}]
        assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
        assert record["llmqueue"]["status"] == "succeeded"
        assert record["llmqueue"]["cost"] == pytest.approx(
            body["usage"]["prompt_tokens"] * EMBEDDING_BATCH_PRICE
        )
    assert records["chat"]["response"]["body"]["object"] == "chat.completion"


def test_cached_lines_are_marked_cached_at_no_cost_and_not_sent_in_the_provider_batch(tmp_path: Path) -> None:
    asked = [
        {"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"question {n}"}]} for n in range(3)
    ]
    first = write_jsonl(tmp_path / "first.jsonl", asked[:2])
    again = write_jsonl(tmp_path / "again.jsonl", asked)  # q0 and q1 are in the cache after the first run
    output = tmp_path / "out.jsonl"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        done = batch_api_run(provider, first, tmp_path / "first.out.jsonl", *cache)
        assert done.returncode == 0, done.stderr
        done = batch_api_run(provider, again, output, *cache)
        stats = provider.stats()

    assert done.returncode == 0, done.stderr
    assert stats["requests"] == 0
    assert sent_batches(stats) == [("/v1/chat/completions", [1, 2]), ("/v1/chat/completions", [3])]
    records = read_jsonl(output)
    marks = [{k: r["llmqueue"][k] for k in ("cached", "via", "cost", "attempts")} for r in records]
    # Marked as a live run marks the lines its cache answers: no provider call, so no Batch API either.
    assert marks[:2] == [{"cached": True, "via": "live", "cost": 0.0, "attempts": 0}] * 2
    assert (marks[2]["cached"], marks[2]["via"], marks[2]["attempts"]) == (False, "batch-api", 1)
    assert marks[2]["cost"] > 0
    assert [r["response"]["body"]["choices"][0]["message"]["content"] for r in records] == [
        f"echo: question {n}" for n in range(3)
    ]
    assert "2 from the cache" in done.stderr, done.stderr
