"""The cross-feature matrix: ``llmqueue run`` end to end over the combinations users make, each case
checking what reached the simulated providers and what the output file says.

Dimensions, covered pairwise rather than as their full product: lines naming their own model or the
default; a ``model_list`` alias with two deployments (each its own process, endpoint and key);
``fallbacks``; ``allowed_models``; embedding lines beside chat lines; the response cache on and off;
priorities (``--priority`` and per-line ``priority``); ``--max-cost``; ``--via batch-api``; a provider
stating Anthropic's rate-limit headers. The simulator has no Anthropic-format route (``/v1/messages``),
so the Anthropic-style provider answers in OpenAI's format with ``anthropic-ratelimit-*`` headers.

Every provider process accepts only its own key and counts any other as a 401, so every case also
checks the invariant: no key reached an endpoint it was not configured for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import clean_env, llmqueue_cli, read_jsonl, write_jsonl

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KEYS = {
    "main": "sk-matrix-main-3f1a",
    "a": "sk-matrix-deployment-a-8c2d",
    "b": "sk-matrix-deployment-b-51e7",
    "down": "sk-matrix-down-0d94",
    "anthropic": "sk-ant-matrix-6b30",
}
PRICED = "openai/gpt-4o-mini"


@dataclass(frozen=True)
class Providers:
    """One simulated provider process per endpoint, each accepting only ``KEYS[name]``."""

    processes: dict[str, ProviderProcess]

    def __getitem__(self, name: str) -> ProviderProcess:
        return self.processes[name]

    def requests(self) -> dict[str, int]:
        """Live chat/embedding calls each provider received since the case began."""
        return {name: process.stats()["requests"] for name, process in self.processes.items()}

    def assert_no_key_went_astray(self) -> None:
        for name, process in self.processes.items():
            refused = process.stats()["errors"].get("401", 0)
            assert refused == 0, f"{refused} call(s) reached {name!r} with a key not configured for it"


@pytest.fixture(scope="module")
def all_providers() -> Iterator[Providers]:
    configs = {
        "main": ProviderConfig(api_key=KEYS["main"]),
        "a": ProviderConfig(api_key=KEYS["a"]),
        "b": ProviderConfig(api_key=KEYS["b"]),
        "down": ProviderConfig(api_key=KEYS["down"], error_rate=1.0),
        "anthropic": ProviderConfig(api_key=KEYS["anthropic"], rate_limit_headers="anthropic"),
    }
    with ExitStack() as stack:
        yield Providers({name: stack.enter_context(ProviderProcess(c)) for name, c in configs.items()})


@pytest.fixture
def providers(all_providers: Providers) -> Iterator[Providers]:
    for process in all_providers.processes.values():
        process.control("reset")
    yield all_providers
    all_providers.assert_no_key_went_astray()


def env_for(providers: Providers, model: str = PRICED, endpoint: str = "main") -> dict[str, str]:
    return clean_env(
        LLM_MODEL=model,
        LLM_BASE_URL=providers[endpoint].base_url,
        LLM_API_KEY=KEYS[endpoint],
        KEY_A=KEYS["a"],
        KEY_B=KEYS["b"],
        KEY_DOWN=KEYS["down"],
    )


def deployment(name: str, process: ProviderProcess, key_variable: str) -> str:
    return f"""
[[model_list]]
model_name = "{name}"
[model_list.litellm_params]
model = "openai/sim-model"
api_base = "{process.base_url}"
api_key = "os.environ/{key_variable}"
"""


def alias_config(providers: Providers) -> str:
    return deployment("evalmodel", providers["a"], "KEY_A") + deployment("evalmodel", providers["b"], "KEY_B")


def chat(custom_id: str, model: str | None = None, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "messages": [{"role": "user", "content": f"q {custom_id}"}],
    }
    return line | ({"model": model} if model else {}) | extra


def embedding(custom_id: str, model: str | None = None) -> dict[str, Any]:
    return {"custom_id": custom_id, "input": f"text {custom_id}"} | ({"model": model} if model else {})


def run(
    tmp_path: Path,
    lines: list[dict[str, Any]],
    env: dict[str, str],
    *args: str,
    config: str = "",
    name: str = "out",
    refused: frozenset[str] = frozenset(),
) -> tuple[int, str, list[dict[str, Any]]]:
    """``llmqueue run`` over ``lines`` with ``--workers 1``: its exit code, stderr and output records,
    after checking the output holds one record per line (but the ``refused`` custom ids), each custom id
    once, in the input's order."""
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    source = write_jsonl(tmp_path / f"{name}.in.jsonl", lines)
    output = tmp_path / f"{name}.jsonl"
    done = llmqueue_cli(["run", str(source), "-o", str(output), "--workers", "1", *args], env, tmp_path)
    records = read_jsonl(output) if output.exists() else []
    assert [r["custom_id"] for r in records] == [
        line["custom_id"] for line in lines if line["custom_id"] not in refused
    ], done.stderr
    return done.returncode, done.stderr, records


def marks(records: list[dict[str, Any]], *fields: str) -> dict[str, tuple[Any, ...]]:
    return {r["custom_id"]: tuple(r["llmqueue"][f] for f in fields) for r in records}


def only(counts: dict[str, int], **expected: int) -> dict[str, int]:
    """``expected`` with every other provider at zero requests."""
    return {name: expected.get(name, 0) for name in counts}


def test_default_and_named_models_with_embeddings_priorities_and_max_cost_go_to_the_llm_endpoint(
    tmp_path: Path, providers: Providers
) -> None:
    lines = [
        chat("default"),
        chat("named", "openai/gpt-4o", priority="interactive"),
        embedding("embed-named", "text-embedding-3-small"),
        embedding("embed-default"),
        chat("urgent", priority=9),
    ]
    code, stderr, records = run(
        tmp_path, lines, env_for(providers), "--no-cache", "--priority", "batch", "--max-cost", "1"
    )

    assert code == 0, stderr
    assert providers.requests() == only(providers.requests(), main=5)
    assert set(marks(records, "status", "via", "cached").values()) == {("succeeded", "live", False)}
    costs = [r["llmqueue"]["cost"] for r in records]
    assert all(cost is not None and cost > 0 for cost in costs) and sum(costs) <= 1, costs
    bodies = {r["custom_id"]: r["response"]["body"] for r in records}
    assert bodies["named"]["model"] == "gpt-4o" and bodies["default"]["model"] == "gpt-4o-mini"
    assert bodies["embed-named"]["object"] == bodies["embed-default"]["object"] == "list"


def test_an_alias_beside_default_lines_sends_each_deployment_its_own_key(
    tmp_path: Path, providers: Providers
) -> None:
    lines = [chat(f"alias{n}", "evalmodel") for n in range(4)] + [chat("default"), embedding("embed")]
    config = alias_config(providers)
    code, stderr, records = run(tmp_path, lines, env_for(providers), "--no-cache", config=config)

    assert code == 0, stderr
    seen = providers.requests()
    by_deployment = Counter(r["llmqueue"]["deployment"] for r in records)
    assert seen == only(seen, main=2, a=by_deployment["evalmodel#0"], b=by_deployment["evalmodel#1"])
    assert seen["a"] + seen["b"] == 4
    assert {r["llmqueue"]["status"] for r in records} == {"succeeded"}
    assert marks(records, "deployment")["default"] == (None,)


def test_a_cached_alias_run_sends_nothing_the_second_time(tmp_path: Path, providers: Providers) -> None:
    lines = [chat(f"alias{n}", "evalmodel") for n in range(3)] + [embedding("embed")]
    cache = ("--cache-dir", str(tmp_path / "cache"))
    config = alias_config(providers)
    first = run(tmp_path, lines, env_for(providers), *cache, config=config, name="first")
    after_first = providers.requests()
    code, stderr, records = run(tmp_path, lines, env_for(providers), *cache, config=config, name="second")

    assert first[0] == 0 and code == 0, (first[1], stderr)
    assert after_first == only(after_first, main=1, a=after_first["a"], b=after_first["b"])
    assert after_first["a"] + after_first["b"] == 3
    assert providers.requests() == after_first  # the second run: 0 new requests anywhere
    assert set(marks(records, "status", "cached", "via", "cost").values()) == {
        ("succeeded", True, "live", 0.0)
    }
    assert set(marks(first[2], "cached").values()) == {(False,)}


def test_a_fallback_takes_the_jobs_of_a_deployment_that_fails_with_its_own_key(
    tmp_path: Path, providers: Providers
) -> None:
    config = 'fallbacks = { "primary" = ["backup"] }\n[llm]\nretry_min_wait = 0.1\nretry_max_wait = 0.2\n'
    config += deployment("primary", providers["down"], "KEY_DOWN") + deployment(
        "backup", providers["b"], "KEY_B"
    )
    lines = [chat(f"f{n}", "primary") for n in range(3)] + [chat("default", priority="interactive")]
    code, stderr, records = run(tmp_path, lines, env_for(providers), "--no-cache", config=config)

    assert code == 0, stderr
    seen = providers.requests()
    assert seen == only(seen, main=1, down=seen["down"], b=3)
    assert 1 <= seen["down"] <= 3  # at most one attempt a job on the failing deployment
    assert {marks(records, "deployment")[f"f{n}"] for n in range(3)} == {("backup#1",)}
    assert {r["llmqueue"]["status"] for r in records} == {"succeeded"}


def test_allowed_models_let_a_matching_model_take_the_llm_key_and_refuse_the_rest(
    tmp_path: Path, providers: Providers
) -> None:
    config = '[llm]\nallowed_models = ["hosted_vllm/*"]\n'
    lines = [
        chat("allowed", "hosted_vllm/sim-model"),
        chat("refused", "anthropic/claude-3-5-haiku-latest"),
        chat("default"),
        embedding("embed"),
    ]
    rejects = tmp_path / "rejects.jsonl"
    args = ("--no-cache", "--skip-invalid", "--rejects", str(rejects))
    code, stderr, records = run(
        tmp_path, lines, env_for(providers), *args, config=config, refused=frozenset({"refused"})
    )

    assert code == 0, stderr
    assert providers.requests() == only(providers.requests(), main=3)
    assert set(marks(records, "status").values()) == {("succeeded",)}
    assert marks(records, "deployment")["allowed"] == (None,)
    [rejected] = read_jsonl(rejects)
    assert rejected["line"] == 2 and "allowed_models" in rejected["reason"], rejected


def test_max_cost_prices_an_alias_from_its_deployments_model_info(
    tmp_path: Path, providers: Providers
) -> None:
    # 16 completion tokens a call at $0.0001 each: every call costs more than $0.0016.
    prices = "[model_list.model_info]\ninput_cost_per_token = 0.0001\noutput_cost_per_token = 0.0001\n"
    config = deployment("evalmodel", providers["a"], "KEY_A") + prices
    config += deployment("evalmodel", providers["b"], "KEY_B") + prices
    lines = [chat(f"alias{n}", "evalmodel", priority="interactive") for n in range(3)] + [chat("default")]
    code, stderr, records = run(
        tmp_path, lines, env_for(providers), "--no-cache", "--max-cost", "1", config=config
    )

    assert code == 0, stderr
    seen = providers.requests()
    assert seen == only(seen, main=1, a=seen["a"], b=seen["b"]) and seen["a"] + seen["b"] == 3
    costs = {r["custom_id"]: r["llmqueue"]["cost"] for r in records}
    assert all(costs[f"alias{n}"] > 0.0016 for n in range(3)), costs
    assert 0 < costs["default"] < 0.0016, costs


def test_batch_api_with_named_models_and_embeddings_sends_nothing_live(
    tmp_path: Path, providers: Providers
) -> None:
    before = len(providers["main"].stats()["batches"])
    lines = [
        chat("default"),
        chat("named", "openai/gpt-4o"),
        embedding("embed"),
        embedding("embed-named", "text-embedding-3-small"),
    ]
    args = ("--via", "batch-api", "--poll-interval", "0.2", "--no-cache")
    code, stderr, records = run(tmp_path, lines, env_for(providers), *args)

    assert code == 0, stderr
    assert providers.requests() == only(providers.requests())
    endpoints = sorted(batch["endpoint"] for batch in providers["main"].stats()["batches"][before:])
    # one provider batch a model (OpenAI's rule): gpt-4o-mini, gpt-4o, text-embedding-3-small
    assert endpoints == ["/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings"]
    assert set(marks(records, "status", "via", "cached").values()) == {("succeeded", "batch-api", False)}
    assert all(r["llmqueue"]["cost"] > 0 for r in records)
    for other in ("a", "b", "down", "anthropic"):
        assert providers[other].stats()["batches"] == []


def test_a_provider_stating_anthropic_headers_with_embeddings_priorities_and_rpm(
    tmp_path: Path, providers: Providers
) -> None:
    lines = [
        chat("first", priority="interactive"),
        chat("second"),
        embedding("embed"),
        chat("named", "openai/gpt-4o"),
    ]
    env = env_for(providers, endpoint="anthropic")
    code, stderr, records = run(tmp_path, lines, env, "--no-cache", "--priority", "5", "--rpm", "600")

    assert code == 0, stderr
    assert providers.requests() == only(providers.requests(), anthropic=4)
    assert set(marks(records, "status", "cached", "via").values()) == {("succeeded", False, "live")}
    assert all(r["llmqueue"]["cost"] > 0 for r in records)
