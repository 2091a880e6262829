"""The response cache across ``llmqueue run``s: each run has its own embedded Redis, the cache outlives it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import provider_env, read_jsonl, run, run_env
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

LINES = 30


def eval_file(path: Path, questions: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for n, question in enumerate(questions):
            line = {
                "custom_id": f"q{n:03d}",
                "model": "openai/sim-model",
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
            }
            out.write(json.dumps(line) + "\n")
    return path


def cache_command(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "llmqueue", "cache", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_second_run_is_served_by_the_cache_and_one_changed_prompt_makes_one_request(
    tmp_path: Path,
) -> None:
    questions = [f"What is {n} squared?" for n in range(LINES)]
    source = eval_file(tmp_path / "eval.jsonl", questions)
    cache_dir = tmp_path / "answers"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider))
        first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
        code, stderr = run(
            [str(source), "-o", str(first_out), "--cache-dir", str(cache_dir), "--workers", "1"],
            env,
            tmp_path,
        )
        assert code == 0, stderr
        assert provider.stats()["requests"] == LINES

        code, stderr = run(
            [str(source), "-o", str(second_out), "--cache-dir", str(cache_dir), "--workers", "1"],
            env,
            tmp_path,
        )
        assert code == 0, stderr
        assert provider.stats()["requests"] == LINES  # not one more
        assert f"0 job(s) queued, {LINES} answered from the cache" in stderr  # no worker needed
        assert (
            f"{LINES}/{LINES} succeeded, 0 failed, 0 cancelled; {LINES} from the cache, 0 requests" in stderr
        )

        questions[7] = "What is 7 cubed?"
        edited = eval_file(tmp_path / "edited.jsonl", questions)
        code, stderr = run([str(edited), "-o", str(tmp_path / "third.jsonl"), "--cache-dir", str(cache_dir),
                            "--workers", "1"],
                           env, tmp_path)  # fmt: skip
        assert code == 0, stderr
        assert provider.stats()["requests"] == LINES + 1
        assert f"{LINES - 1} from the cache, 1 requests" in stderr
        assert f"1 job(s) queued, {LINES - 1} answered from the cache" in stderr

    first, second = read_jsonl(first_out), read_jsonl(second_out)
    assert [r["custom_id"] for r in second] == [f"q{n:03d}" for n in range(LINES)]
    assert [r["llmqueue"]["cached"] for r in first] == [False] * LINES
    assert [r["llmqueue"]["cached"] for r in second] == [True] * LINES
    assert [r["llmqueue"]["cost"] for r in second] == [0.0] * LINES
    assert [r["response"]["body"] for r in second] == [r["response"]["body"] for r in first]

    stats = cache_command(["stats", "--cache-dir", str(cache_dir)], env, tmp_path)
    assert f"entries   {LINES + 1}" in stats and f"hits      {2 * LINES - 1}" in stats
    assert f"{LINES + 1} cached answer(s) removed" in cache_command(
        ["clear", "--cache-dir", str(cache_dir)], env, tmp_path
    )
    assert "entries   0" in cache_command(["stats", "--cache-dir", str(cache_dir)], env, tmp_path)


def test_no_cache_calls_for_every_line_and_leaves_the_cache_empty(tmp_path: Path) -> None:
    source = eval_file(tmp_path / "eval.jsonl", [f"Name planet {n}" for n in range(5)])
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider))
        for _ in range(2):
            code, stderr = run([str(source), "--no-cache", "--workers", "1"], env, tmp_path)
            assert code == 0, stderr
        assert provider.stats()["requests"] == 10
    assert "entries   0" in cache_command(["stats"], env, tmp_path)


def test_the_redis_backend_without_a_long_running_redis_is_refused_before_starting(tmp_path: Path) -> None:
    source = eval_file(tmp_path / "eval.jsonl", ["hello"])
    (tmp_path / "config.toml").write_text('[cache]\nbackend = "redis"\n', encoding="utf-8")
    code, stderr = run([str(source)], run_env(), tmp_path, timeout=60)
    assert code == 2
    assert 'backend = "redis"' in stderr and "--redis-url" in stderr
