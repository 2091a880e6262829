"""Smaller seams between features, each run as the user ran it: a deployment key missing from the
environment, a top-level key written after ``[llm]``, a Redis URL of another scheme, a parameter the
model does not take, and a batch that reaches its budget under a narrow progress bar."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from llmqueue.batches.display import BatchProgress, progress_detail
from llmqueue.queue.ledger import BatchStatus
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl
from tests.support.settings import TEST_API_KEY

MISSING_KEY_CONFIG = """
[[model_list]]
model_name = "evalmodel"
litellm_params = { model = "openai/sim-model", api_key = "os.environ/KEY_NOT_SET_ANYWHERE" }
"""
LINE = {"custom_id": "a", "model": "evalmodel", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.slow
def test_a_deployment_key_missing_from_the_environment_stops_run_before_it_queues(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "config.toml").write_text(MISSING_KEY_CONFIG, encoding="utf-8")
    source = write_jsonl(tmp_path / "in.jsonl", [LINE])

    ran = llmqueue_cli(["run", str(source), "-o", str(tmp_path / "out.jsonl")], clean_env(), tmp_path)
    submitted = llmqueue_cli(["submit", str(source), "--redis-url", redis_url], clean_env(), tmp_path)

    assert ran.returncode == 2, ran.stderr
    assert "KEY_NOT_SET_ANYWHERE is not set" in ran.stderr and "nothing was queued" in ran.stderr
    assert "queued" not in ran.stderr.replace("nothing was queued", "")
    assert not (tmp_path / "out.jsonl").exists()
    # submit queues for workers that may have an environment of their own: it warns, up front.
    assert submitted.returncode == 0, submitted.stderr
    assert "warning" in submitted.stderr and "KEY_NOT_SET_ANYWHERE is not set" in submitted.stderr


def test_a_top_level_key_written_after_llm_says_to_move_it(tmp_path: Path) -> None:
    config = '[llm]\nmodel = "gpt-4o"\nfallbacks = { "gpt-4o" = ["gpt-4o-mini"] }\n'
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    source = write_jsonl(tmp_path / "in.jsonl", [LINE])

    done = llmqueue_cli(["submit", str(source), "--dry-run"], clean_env(), tmp_path)

    assert done.returncode == 2
    assert "[llm.fallbacks]" not in done.stderr
    assert "move fallbacks above the first [table]" in done.stderr, done.stderr


def test_a_redis_url_of_another_scheme_is_one_clear_line(tmp_path: Path) -> None:
    done = llmqueue_cli(
        ["status", "b1", "--redis-url", "memcached://user:pw@host:11211"], clean_env(), tmp_path
    )

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert (
        "redis_url: a Redis URL starts with redis://, rediss://, unix:// or redis+sentinel://, "
        "not memcached://" in done.stderr
    )
    assert "pw" not in done.stderr


@pytest.mark.slow
def test_a_call_refused_before_it_left_is_not_counted_as_a_request(tmp_path: Path) -> None:
    line = {"custom_id": "a", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 1}}
    source = write_jsonl(tmp_path / "in.jsonl", [line])
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = clean_env(
            LLM_MODEL="anthropic/claude-3-haiku-20240307",
            LLM_BASE_URL=provider.base_url,
            LLM_API_KEY=TEST_API_KEY,
            LLM_DROP_PARAMS="false",
        )
        done = llmqueue_cli(["run", str(source), "-o", str(output), "--no-cache"], env, tmp_path)
        stats = provider.stats()

    assert done.returncode == 1, done.stderr
    assert stats["requests"] == 0
    assert "0/1 succeeded, 1 failed, 0 cancelled; 0 requests" in done.stderr, done.stderr
    (record,) = read_jsonl(output)
    assert record["response"] is None  # no HTTP answer: the call never left
    assert record["error"]["code"] == "unsupported_params"
    assert "LLM_DROP_PARAMS=true" in record["error"]["message"]
    assert "litellm.drop_params" not in record["error"]["message"]


def spent(**fields: object) -> BatchStatus:
    values: dict[str, object] = {
        "batch_id": "b1", "total": 40, "queued": 28, "running": 0, "retry_waiting": 0, "succeeded": 12,
        "failed": 0, "cancelled": 0, "cached": 0, "requests": 12, "rate_limited": 3, "prompt_tokens": 60,
        "completion_tokens": 40, "tokens": 100, "cost": 0.0051, "max_cost": 0.005, "max_tokens": None,
        "cancel_requested": False, "created_at": 0.0, "elapsed": 3.0, "throughput": 4.0,
        "eta_seconds": None, "source": None,
    }  # fmt: skip
    return BatchStatus(**{**values, **fields})  # type: ignore[arg-type]


def test_a_spent_budget_is_said_in_full_above_a_narrow_bar() -> None:
    console = Console(width=60, record=True, force_terminal=False)
    with BatchProgress(console) as progress:
        progress.update(spent())
        progress.update(spent(succeeded=13))
    text = " ".join(console.export_text().split())
    assert text.count("reached its budget") == 1
    assert "batch b1 reached its budget (max $0.005): no further job starts" in text
    assert progress_detail(spent()).startswith("[yellow]budget reached[/yellow]")
