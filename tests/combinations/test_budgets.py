"""``--max-cost`` with nothing slowing the calls: each call reserves its estimated price before it is
sent, so the batch stops near its budget, not at several times it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from llmqueue.ops.local_cluster import run_dir
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
            ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1", "--max-cost", "0.005"],
            env,
            tmp_path,
        )
        stats = provider.stats()

    records = read_jsonl(output)
    spent = sum(r["llmqueue"].get("cost") or 0.0 for r in records)
    statuses = [r["llmqueue"]["status"] for r in records]
    assert done.returncode != 0  # not every job succeeded: the budget stopped the batch
    assert statuses.count("cancelled") > 300, statuses.count("cancelled")
    assert 0.004 <= spent <= 0.005 * 1.2, spent
    assert stats["requests"] == statuses.count("succeeded"), stats


def test_a_model_without_a_price_under_a_budget_is_refused_up_front_naming_it(tmp_path: Path) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}]
    )
    with ProviderProcess(ProviderConfig(api_key=KEY)) as provider:
        env = clean_env(LLM_MODEL="openai/my-finetune-xyz", LLM_BASE_URL=provider.base_url, LLM_API_KEY=KEY)
        batch = f"unpriced-{uuid.uuid4().hex[:8]}"
        out = str(tmp_path / "out.jsonl")
        done = llmqueue_cli(
            ["run", str(source), "-o", out, "--batch", batch, "--max-cost", "1"], env, tmp_path
        )
        stats = provider.stats()

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "'openai/my-finetune-xyz'" in done.stderr and "input_cost_per_token" in done.stderr
    assert "Traceback" not in done.stderr
    assert stats["requests"] == 0
    assert not run_dir(batch).exists()  # refused before its batch began: nothing to resume is kept


def test_prices_given_in_the_config_price_and_cap_a_model_litellm_does_not_know(tmp_path: Path) -> None:
    lines = ({"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"q {n}"}]} for n in range(50))
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    # 16 completion tokens a call at $0.0001 each: $0.0016 a call and more, so $0.01 is ~6 calls.
    config = "[llm]\ninput_cost_per_token = 0.0001\noutput_cost_per_token = 0.0001\n"
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    with ProviderProcess(ProviderConfig(api_key=KEY, latency=0.1, rate_limit_headers="none")) as provider:
        env = clean_env(LLM_MODEL="openai/my-finetune-xyz", LLM_BASE_URL=provider.base_url, LLM_API_KEY=KEY)
        done = llmqueue_cli(
            ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1", "--max-cost", "0.01"],
            env,
            tmp_path,
        )
        stats = provider.stats()

    records = read_jsonl(output)
    costs = [r["llmqueue"]["cost"] for r in records if r["llmqueue"]["status"] == "succeeded"]
    assert done.returncode != 0, done.stderr
    assert costs and all(c is not None and c > 0 for c in costs), costs
    assert 0.008 <= sum(costs) <= 0.01 * 1.2, sum(costs)
    assert stats["requests"] == len(costs) < 50


def test_a_batch_its_budget_stopped_goes_on_with_a_higher_one(tmp_path: Path) -> None:
    lines = ({"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"q {n}"}]} for n in range(30))
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    (tmp_path / "config.toml").write_text(
        "[llm]\ninput_cost_per_token = 0.0001\noutput_cost_per_token = 0.0001\n", encoding="utf-8"
    )
    with ProviderProcess(ProviderConfig(api_key=KEY, latency=0.05, rate_limit_headers="none")) as provider:
        env = clean_env(LLM_MODEL="openai/my-finetune-xyz", LLM_BASE_URL=provider.base_url, LLM_API_KEY=KEY)
        run = ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1", "--batch", "b1"]
        stopped = llmqueue_cli([*run, "--max-cost", "0.01"], env, tmp_path)
        first = provider.stats()["requests"]
        resumed = llmqueue_cli(
            ["run", "--resume", "b1", "-o", str(output), "--no-cache", "--workers", "1", "--max-cost", "1"],
            env,
            tmp_path,
        )
        total = provider.stats()["requests"]

    assert stopped.returncode == 1, stopped.stderr
    said = stopped.stdout + stopped.stderr
    assert "llmqueue run --resume b1" in said and "--max-cost USD" in said, said
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert [r["llmqueue"]["status"] for r in read_jsonl(output)] == ["succeeded"] * 30
    assert first < 30 and total == 30  # the jobs that ran before did not run again


def test_a_batch_its_token_cap_stopped_goes_on_with_a_higher_one_and_no_price(tmp_path: Path) -> None:
    # A model without a price: a token cap needs none. The resume raises only --max-tokens, as the hint
    # says; it queued nothing and wrote the stopped lines as cancelled, final, before.
    lines = ({"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"q {n}"}]} for n in range(30))
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=KEY, latency=0.05, rate_limit_headers="none")) as provider:
        env = clean_env(LLM_MODEL="openai/my-finetune-xyz", LLM_BASE_URL=provider.base_url, LLM_API_KEY=KEY)
        run = ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1", "--batch", "t1"]
        stopped = llmqueue_cli([*run, "--max-tokens", "150"], env, tmp_path)
        first = provider.stats()["requests"]
        same = ["run", "--resume", "t1", "-o", str(output), "--no-cache", "--workers", "1"]
        refused = llmqueue_cli([*same, "--max-tokens", "150"], env, tmp_path)  # no higher: refused, kept
        resumed = llmqueue_cli([*same, "--max-tokens", "100000"], env, tmp_path)
        total = provider.stats()["requests"]

    assert stopped.returncode == 1, stopped.stderr
    said = stopped.stdout + stopped.stderr
    (hint,) = [line for line in said.splitlines() if "go on with a higher one" in line]
    assert "llmqueue run --resume t1" in hint and hint.endswith(" --max-tokens N"), hint
    assert "--max-cost" not in hint and hint.count("--max-tokens") == 1, hint
    # The calls in flight hold their estimated tokens: the cap is passed by one call (20 tokens) at most.
    used = re.search(r"(\d+) tokens, \$", said)
    assert used is not None and 150 <= int(used[1]) <= 150 + 20, said
    assert refused.returncode == 2 and "give a higher one to go on (--max-tokens N)" in refused.stderr, (
        refused.stdout,
        refused.stderr,
    )
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert [r["llmqueue"]["status"] for r in read_jsonl(output)] == ["succeeded"] * 30
    assert first < 30 and total == 30  # the jobs that ran before did not run again


def test_a_worker_that_knows_no_price_sends_no_call_of_a_budgeted_batch(
    redis_url: str, tmp_path: Path
) -> None:
    # The submitter priced the model (its own [llm] prices), so the budget was accepted; the worker
    # has no price: before, it sent every call uncounted and the budget held nothing.
    lines = ({"custom_id": f"q{n}", "messages": [{"role": "user", "content": f"q {n}"}]} for n in range(5))
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    model = "openai/my-finetune-xyz"
    with ProviderProcess(ProviderConfig(api_key=KEY)) as provider:
        priced = clean_env(
            LLM_MODEL=model, LLM_INPUT_COST_PER_TOKEN="0.0001", LLM_OUTPUT_COST_PER_TOKEN="0.0001"
        )
        where = ["--redis-url", redis_url]
        submitted = llmqueue_cli(
            ["submit", str(source), "--batch", "np", "--max-cost", "1", *where],
            priced,
            tmp_path,
        )
        worker_env = clean_env(LLM_MODEL=model, LLM_BASE_URL=provider.base_url, LLM_API_KEY=KEY)
        worked = llmqueue_cli(["worker", "--burst", *where], worker_env, tmp_path)
        written = llmqueue_cli(["results", "np", "-o", str(tmp_path / "out.jsonl"), *where], priced, tmp_path)
        sent_unpriced = provider.stats()["requests"]
        # Once the workers have the price, the failed jobs go again.
        retried = llmqueue_cli(["retry", "np", "--failed", *where], priced, tmp_path)
        priced_worker = {**worker_env, **priced}
        rerun = llmqueue_cli(["worker", "--burst", *where], priced_worker, tmp_path)
        again = llmqueue_cli(["results", "np", "-o", str(tmp_path / "again.jsonl"), *where], priced, tmp_path)
        sent = provider.stats()["requests"]

    assert submitted.returncode == 0, submitted.stderr
    assert worked.returncode == 0, worked.stderr
    assert written.returncode in (0, 1), written.stderr
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["llmqueue"]["status"] for r in records] == ["failed"] * 5
    assert "knows no price for 'openai/my-finetune-xyz'" in json.dumps(records[0]), records[0]
    assert sent_unpriced == 0
    assert "5 failed job(s) queued again" in retried.stdout + retried.stderr, retried
    assert rerun.returncode == 0 and again.returncode == 0, (rerun.stderr, again.stderr)
    assert [r["llmqueue"]["status"] for r in read_jsonl(tmp_path / "again.jsonl")] == ["succeeded"] * 5
    assert sent == 5


def test_a_model_without_a_price_under_a_spending_limit_is_refused_up_front_naming_it(
    tmp_path: Path,
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}]
    )
    with ProviderProcess(ProviderConfig(api_key=KEY)) as provider:
        env = clean_env(
            LLM_MODEL="openai/my-finetune-xyz",
            LLM_BASE_URL=provider.base_url,
            LLM_API_KEY=KEY,
            LLM_BUDGET_DAILY="5",
        )
        batch = f"unpriced-{uuid.uuid4().hex[:8]}"
        out = str(tmp_path / "out.jsonl")
        done = llmqueue_cli(["run", str(source), "-o", out, "--batch", batch], env, tmp_path)
        stats = provider.stats()

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "spending limits ([budget])" in done.stderr and "'openai/my-finetune-xyz'" in done.stderr
    assert "Traceback" not in done.stderr
    assert stats["requests"] == 0
    assert not run_dir(batch).exists()
