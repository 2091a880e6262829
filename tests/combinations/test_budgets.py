"""``--max-cost`` with nothing slowing the calls: each call reserves its estimated price before it is
sent, so the batch stops near its budget, not at several times it."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KEY = "sk-budget-test-91c3"


def test_a_budget_holds_on_a_key_that_states_no_limits(tmp_path: Path) -> None:
    # 400 lines of ~1000 prompt tokens at gpt-4o-mini's price ($0.15/M in): ~$0.00016 a call, so a
    # $0.005 budget is ~30 calls; the workers could start hundreds at once.
    text = "word " * 1000
    lines = (
        {"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"{n} {text}"}], "max_tokens": 16}
        for n in range(400)
    )
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=KEY, latency=0.2, rate_limit_headers="none")) as provider:
        env = clean_env(LLM_MODEL="gpt-4o-mini", LLM_BASE_URL=provider.base_url, LLM_API_KEY=KEY)
        done = llmqueue_cli(
            ["run", str(source), "-o", str(output), "--no-cache", "--max-cost", "0.005"], env, tmp_path
        )
        stats = provider.stats()

    records = read_jsonl(output)
    spent = sum(r["llmqueue"].get("cost") or 0.0 for r in records)
    statuses = [r["llmqueue"]["status"] for r in records]
    assert done.returncode != 0  # not every job succeeded: the budget stopped the batch
    assert statuses.count("cancelled") > 300, statuses.count("cancelled")
    assert 0.004 <= spent <= 0.005 * 1.2, spent
    assert stats["requests"] == statuses.count("succeeded"), stats
