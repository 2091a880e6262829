"""Where the workers' credentials go, with the features users combine: ``model_list`` aliases with a
key per deployment, and embedding lines next to a chat model of another provider.

Each simulated provider accepts only its own key (any other is answered 401 and counted), so what a
provider's counters show is which key reached which endpoint.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KEY_A = "sk-deployment-a-51c0e9"
KEY_B = "sk-deployment-b-7d2f44"
ANTHROPIC_KEY = "sk-ant-chat-key-0b8e13"
OPENAI_KEY = "sk-openai-own-key-93aa2c"


def alias_config(a: ProviderProcess, b: ProviderProcess) -> str:
    return f"""
[llm]
retry_min_wait = 0.2
retry_max_wait = 1.0

[[model_list]]
model_name = "evalmodel"
[model_list.litellm_params]
model = "openai/sim-model"
api_base = "{a.base_url}"
api_key = "os.environ/KEY_A"
rpm = 3000

[[model_list]]
model_name = "evalmodel"
[model_list.litellm_params]
model = "openai/sim-model"
api_base = "{b.base_url}"
api_key = "os.environ/KEY_B"
rpm = 3000
"""


def test_an_alias_with_two_deployments_runs_each_with_its_own_key(tmp_path: Path) -> None:
    # [llm] model stays gpt-4o: the lines name the alias, which only the model_list serves.
    lines = (
        {"custom_id": f"q{n}", "model": "evalmodel", "messages": [{"role": "user", "content": f"q {n}"}]}
        for n in range(100)
    )
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with (
        ProviderProcess(ProviderConfig(api_key=KEY_A, latency=0.05)) as a,
        ProviderProcess(ProviderConfig(api_key=KEY_B, latency=0.05)) as b,
    ):
        (tmp_path / "config.toml").write_text(alias_config(a, b), encoding="utf-8")
        env = clean_env(KEY_A=KEY_A, KEY_B=KEY_B)
        done = llmqueue_cli(
            ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1"], env, tmp_path
        )
        seen = {"a": a.stats(), "b": b.stats()}

    assert done.returncode == 0, done.stderr
    records = read_jsonl(output)
    assert [r["llmqueue"]["status"] for r in records] == ["succeeded"] * 100
    assert seen["a"]["requests"] + seen["b"]["requests"] == 100
    for name, stats in seen.items():
        assert stats["errors"] == {}, (name, stats["errors"])  # no key but its own reached it (no 401)
    # Each answer names the deployment that served it, and that deployment's endpoint counted it. How
    # the calls split is the limiter's choice (tests/limits/test_limiter.py); both take a first call.
    served = Counter(r["llmqueue"]["deployment"] for r in records)
    assert served == {"evalmodel#0": seen["a"]["requests"], "evalmodel#1": seen["b"]["requests"]}
    assert min(served.values()) > 0, served


def embedding_lines() -> list[dict[str, object]]:
    return [
        {"custom_id": "named", "model": "text-embedding-3-small", "input": "a sentence"},
        {"custom_id": "default", "input": "another sentence"},
    ]


def test_embedding_lines_never_take_the_chat_key_to_another_provider(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", embedding_lines())
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=OPENAI_KEY)) as openai:
        # OpenAI's endpoint is the simulated one: a call that went there would be counted.
        env = clean_env(
            LLM_MODEL="anthropic/claude-sonnet-4-5",
            LLM_API_KEY=ANTHROPIC_KEY,
            OPENAI_BASE_URL=openai.base_url,
        )
        done = llmqueue_cli(
            ["run", str(source), "-o", str(output), "--no-cache", "--workers", "1"], env, tmp_path
        )
        refused = openai.stats()

        # With OpenAI's own key in the environment, the same lines go there with that key.
        env["OPENAI_API_KEY"] = OPENAI_KEY
        args = ["run", str(source), "-o", str(tmp_path / "ok.jsonl"), "--no-cache", "--workers", "1"]
        again = llmqueue_cli(args, env, tmp_path)
        served = openai.stats()

    assert done.returncode == 1, done.stderr
    assert refused["requests"] == 0
    for record in read_jsonl(output):
        assert record["llmqueue"]["status"] == "failed"
        message = record["error"]["message"]
        assert "no credentials" in message and "OPENAI_API_KEY" in message, message
    assert again.returncode == 0, again.stderr
    assert served["requests"] == 2 and served["errors"] == {}
    assert [r["llmqueue"]["status"] for r in read_jsonl(tmp_path / "ok.jsonl")] == ["succeeded"] * 2
