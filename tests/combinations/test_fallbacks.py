"""Fallbacks with a deployment that is down: jobs leave it for their fallback at once, instead of
spending their attempts on it or waiting for it to come back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KEY = "sk-fallback-test-2b71"


def fallback_config(a: ProviderProcess, b: ProviderProcess) -> str:
    # The defaults of [llm] (retries 5 s apart) and [router_settings] (out after 3 failures, 5 s).
    return f"""
fallbacks = {{ "a" = ["b"] }}

[[model_list]]
model_name = "a"
[model_list.litellm_params]
model = "openai/sim-model"
api_base = "{a.base_url}"
api_key = "os.environ/KEY"

[[model_list]]
model_name = "b"
[model_list.litellm_params]
model = "openai/sim-model"
api_base = "{b.base_url}"
api_key = "os.environ/KEY"
"""


def run_twenty(tmp_path: Path, a_config: ProviderConfig) -> tuple[list[dict], dict, dict, float]:
    lines = (
        {"custom_id": f"q{n}", "model": "a", "messages": [{"role": "user", "content": f"q {n}"}]}
        for n in range(20)
    )
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with (
        ProviderProcess(a_config) as a,
        ProviderProcess(ProviderConfig(api_key=KEY, latency=0.05)) as b,
    ):
        (tmp_path / "config.toml").write_text(fallback_config(a, b), encoding="utf-8")
        began = time.monotonic()
        done = llmqueue_cli(
            ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1"],
            clean_env(KEY=KEY),
            tmp_path,
        )
        took = time.monotonic() - began
        seen_a, seen_b = a.stats(), b.stats()
    assert done.returncode == 0, done.stderr
    return read_jsonl(output), seen_a, seen_b, took


def test_jobs_leave_a_deployment_answering_500_for_their_fallback_at_once(tmp_path: Path) -> None:
    records, seen_a, seen_b, took = run_twenty(
        tmp_path, ProviderConfig(api_key=KEY, error_rate=1.0, latency=0.05)
    )

    assert [r["llmqueue"]["status"] for r in records] == ["succeeded"] * 20
    assert took < 60, took
    assert seen_a["requests"] <= 20, seen_a
    assert seen_b["requests"] == 20, seen_b
    assert {r["llmqueue"]["deployment"] for r in records} == {"b#1"}


def test_jobs_leave_a_deployment_answering_429_after_one_attempt(tmp_path: Path) -> None:
    # A bucket smaller than one request: every call is answered 429, with no headers to learn from.
    always_429 = ProviderConfig(api_key=KEY, rpm=1, latency=0.05, rate_limit_headers="none")
    records, seen_a, seen_b, took = run_twenty(tmp_path, always_429)

    assert [r["llmqueue"]["status"] for r in records] == ["succeeded"] * 20
    assert took < 60, took
    assert seen_a["requests"] <= 20, seen_a  # one each at most (its bucket lets the first through)
    assert seen_a["succeeded"] + seen_b["succeeded"] == 20, (seen_a, seen_b)
