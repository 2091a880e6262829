"""``--dry-run``: the estimate's numbers against a hand count, cache hits, and the command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmqueue.batches.estimate import estimate_file
from llmqueue.cache import job_cache_key
from llmqueue.cache.disk import DiskStore
from llmqueue.cli import app
from llmqueue.errors import InvalidBatchFileError
from llmqueue.models import Job
from llmqueue.settings import CacheConfig, LimitConfig, LLMConfig, Settings
from tests.support.imports import litellm_imported_by

pytestmark = pytest.mark.slow

# Hand count (OpenAI's chat format, as LiteLLM's token_counter applies it to gpt-4o models): 3 tokens per
# message + its role (1) + its content, and 3 to prime the reply. "hello world" is 2 tokens, "hello" and
# "world" 1 each. So [user "hello world"] = 3+1+2+3 = 9 and [system "hello", user "world"] = 4+1+4+1+3 = 13.
LINES: list[dict[str, Any]] = [
    {"custom_id": "a", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}],
     "max_tokens": 10},
    {"custom_id": "b", "model": "gpt-4o-mini",
     "messages": [{"role": "system", "content": "hello"}, {"role": "user", "content": "world"}]},
    {"custom_id": "c", "model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}],
     "max_completion_tokens": 50},
]  # fmt: skip
# Prices per token (LiteLLM's table): gpt-4o-mini 0.15/0.60 per million in/out, Batch API 0.075/0.30;
# gpt-4o 2.50/10.00, Batch API 1.25/5.00.
MINI_IN, MINI_OUT, MINI_BATCH_IN, MINI_BATCH_OUT = 0.15e-6, 0.6e-6, 0.075e-6, 0.3e-6
FOUR_IN, FOUR_OUT, FOUR_BATCH_IN, FOUR_BATCH_OUT = 2.5e-6, 10e-6, 1.25e-6, 5e-6
DEFAULT_COMPLETION = 100


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        llm=LLMConfig(model="openai/sim-model", default_completion_tokens=DEFAULT_COMPLETION),
        limits={"gpt-4o-mini": LimitConfig(rpm=30, tpm=600)},
        cache=CacheConfig(dir=tmp_path / "cache"),
    )


async def test_tokens_cost_and_time_match_a_hand_count(settings: Settings, tmp_path: Path) -> None:
    estimate = await estimate_file(write_lines(tmp_path / "in.jsonl", LINES), settings)
    four, mini = estimate.models  # sorted by name
    assert (mini.model, mini.lines, mini.cache_hits) == ("gpt-4o-mini", 2, 0)
    assert (mini.prompt_tokens, mini.completion_tokens) == (9 + 13, 10 + DEFAULT_COMPLETION)
    assert mini.cost is not None and mini.batch_cost is not None
    assert mini.cost.low == pytest.approx(22 * MINI_IN)
    assert mini.cost.high == pytest.approx(22 * MINI_IN + 110 * MINI_OUT)
    assert mini.batch_cost.low == pytest.approx(22 * MINI_BATCH_IN)
    assert mini.batch_cost.high == pytest.approx(22 * MINI_BATCH_IN + 110 * MINI_BATCH_OUT)
    # 2 requests at 30 rpm take 4 s; 132 tokens at 600 tpm take 13.2 s: the tokens decide.
    assert estimate.seconds(mini) == pytest.approx(13.2)
    assert (four.model, four.lines, four.prompt_tokens, four.completion_tokens) == ("gpt-4o", 1, 9, 50)
    assert four.cost is not None and four.batch_cost is not None
    assert four.cost.high == pytest.approx(9 * FOUR_IN + 50 * FOUR_OUT)
    assert four.batch_cost.high == pytest.approx(9 * FOUR_BATCH_IN + 50 * FOUR_BATCH_OUT)
    assert estimate.seconds(four) is None  # no limit configured for gpt-4o


async def test_rpm_decides_the_time_when_requests_are_the_narrower_limit(tmp_path: Path) -> None:
    settings = Settings(limits={"gpt-4o-mini": LimitConfig(rpm=2)}, cache=CacheConfig(enabled=False))
    lines = [{**LINES[0], "custom_id": f"q{n}"} for n in range(5)]
    estimate = await estimate_file(write_lines(tmp_path / "in.jsonl", lines), settings)
    assert estimate.seconds(estimate.models[0]) == pytest.approx(5 / 2 * 60)


async def test_a_model_without_a_price_has_no_cost(settings: Settings, tmp_path: Path) -> None:
    lines = [{"messages": [{"role": "user", "content": "hello world"}]}]  # the configured openai/sim-model
    (model,) = (await estimate_file(write_lines(tmp_path / "in.jsonl", lines), settings)).models
    assert (model.model, model.prompt_tokens, model.completion_tokens) == ("openai/sim-model", 9, 100)
    assert model.cost is None and model.batch_cost is None


async def test_lines_in_the_cache_are_counted_as_hits_and_cost_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    job = Job.model_validate(
        {"model": "gpt-4o-mini", "messages": LINES[0]["messages"], "params": {"max_tokens": 10}}
    )
    store = DiskStore(settings.cache.resolved_dir(), ttl=None, max_bytes=10**6)
    await store.put(job_cache_key(job, settings.llm), {"id": "chatcmpl-1", "choices": []})
    await store.close()
    path = write_lines(tmp_path / "in.jsonl", LINES)
    mini = (await estimate_file(path, settings)).models[1]
    assert (mini.lines, mini.cache_hits, mini.calls, mini.prompt_tokens, mini.completion_tokens) == (
        2,
        1,
        1,
        13,
        DEFAULT_COMPLETION,
    )
    assert mini.cost is not None and mini.cost.high == pytest.approx(13 * MINI_IN + 100 * MINI_OUT)
    uncached = (await estimate_file(path, settings, use_cache=False)).models[1]
    assert uncached.cache_hits == 0


async def test_a_bad_file_is_refused(settings: Settings, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [*LINES, {"custom_id": "d", "model": "gpt-4o"}])
    with pytest.raises(InvalidBatchFileError, match="line 4: missing messages"):
        await estimate_file(path, settings)


def dry_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "WORKER_", "BATCH_", "CACHE_"))}
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "llmqueue", *args, "--dry-run"],
        env={**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_dry_run_prints_the_estimate_and_queues_nothing(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", LINES)
    done = dry_run(["run", str(path), "--rpm", "30", "--model", "gpt-4o-mini"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "gpt-4o-mini: 2 line(s), 0 answered by the cache, 2 to call" in out
    assert "prompt tokens 22 · completion tokens up to 1034" in out  # 10 + the default 1024
    low, high = 22 * MINI_IN, 22 * MINI_IN + 1034 * MINI_OUT
    assert f"cost ${low:.6f} to ${high:.6f}" in out
    assert "time at the limits: 4s (30 rpm)" in out
    # --rpm limits every model the file names, each in a bucket of its own (the gpt-4o line too).
    assert "gpt-4o: 1 line(s)" in out and "time at the limits: 2s (30 rpm)" in out
    assert not (tmp_path / "results.jsonl").exists()


def test_submit_dry_run_needs_no_redis(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", LINES[:1])
    done = dry_run(["submit", str(path), "--redis-url", "redis://127.0.0.1:1/0"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "gpt-4o-mini: 1 line(s)" in done.stdout


def test_dry_run_of_a_bad_file_exits_2(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [LINES[0], {"custom_id": "x", "messages": "hi"}])
    done = dry_run(["run", str(path)], tmp_path)
    assert done.returncode == 2
    assert "line 2" in done.stderr and "nothing was enqueued" in done.stderr


def test_dry_run_refuses_a_bad_file_before_importing_litellm(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [LINES[0], {"custom_id": "x", "messages": "hi"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "WORKER_", "BATCH_", "CACHE_"))}
    done, imported = litellm_imported_by(["run", str(path), "--dry-run"], env=env, cwd=tmp_path)
    assert done.returncode == 2 and "line 2" in done.stderr
    assert not imported  # only the estimate of a good file needs it


def test_dry_run_refuses_the_lines_a_submission_refuses(tmp_path: Path, redis_url: str) -> None:
    # The workers' settings name their model, so submit checks each line against their policy.
    (tmp_path / "config.toml").write_text('[llm]\nmodel = "gpt-4o-mini"\n', encoding="utf-8")
    hello = [{"role": "user", "content": "hello"}]
    path = write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "a", "messages": hello, "mock_response": "fake"},
            {"custom_id": "b", "messages": hello, "best_of": 2},
        ],
    )
    submitted = subprocess.run(
        [sys.executable, "-m", "llmqueue", "submit", str(path), "--redis-url", redis_url],
        env={
            k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "WORKER_", "BATCH_", "CACHE_"))
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for command in (["submit", str(path)], ["run", str(path)]):
        done = dry_run(command, tmp_path)
        assert done.returncode == 2, (command, done.stdout)
        assert "line 1: invalid job: params mock_response" in done.stderr, done.stderr
        assert "line 2: invalid job: params best_of" in done.stderr, done.stderr
        assert "to call" not in done.stdout
    assert submitted.returncode == 2 and "line 1: invalid job: params mock_response" in submitted.stderr


def test_dry_run_says_whether_the_estimate_is_above_max_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process (with the environment dry_run gives its child): three processes would each
    # spend seconds importing LiteLLM; the commands above run as real processes.
    for name in list(os.environ):
        if name.startswith(("LLM_", "WORKER_", "BATCH_", "CACHE_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = write_lines(tmp_path / "in.jsonl", LINES)
    # At most 1034 completion tokens of gpt-4o-mini and 50 of gpt-4o: about $0.0014 in all.
    runner = CliRunner()
    above = runner.invoke(app, ["run", str(path), "--max-cost", "0.000001", "--dry-run"])
    within = runner.invoke(app, ["submit", str(path), "--max-cost", "1", "--dry-run"])
    maybe = runner.invoke(app, ["run", str(path), "--max-cost", "0.0005", "--dry-run"])

    assert above.exit_code == 0, above.stderr
    assert "--max-cost $0.000001: the estimate is above it" in above.stdout, above.stdout
    assert "--max-cost $1.00: the estimate is within it" in within.stdout, within.stdout
    assert "--max-cost $0.000500: the estimate may be above it" in maybe.stdout, maybe.stdout
