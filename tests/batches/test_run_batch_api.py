"""``llmqueue run --via batch-api`` as users run it: its own Redis, the simulated provider in a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmqueue.ops.local_cluster import run_dir
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import batch_name, provider_env, read_jsonl, run, run_env, start_run, stop
from tests.support.settings import TEST_API_KEY

__all__ = ["batch_name"]  # the fixture, shared with test_run
pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


def eval_file(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            line = {"custom_id": f"q{n}", "model": "openai/gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"Translate 'cat {n}' to French"}]}  # fmt: skip
            out.write(json.dumps(line) + "\n")
    return path


def test_run_via_batch_api_writes_every_line_in_order_at_the_batch_price(
    tmp_path: Path, batch_name: str
) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 12)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider))
        args = [
            str(source),
            "-o",
            str(output),
            "--via",
            "batch-api",
            "--poll-interval",
            "0.2",
            "--batch",
            batch_name,
        ]
        code, stderr = run(args, env, tmp_path)
        stats = provider.stats()
    assert code == 0, stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == [f"q{n}" for n in range(12)]
    assert {r["llmqueue"]["via"] for r in records} == {"batch-api"}
    assert all(r["llmqueue"]["cost"] > 0 for r in records)
    assert (stats["requests"], stats["batches_created"], stats["batch_lines_answered"]) == (0, 1, 12)
    assert "12/12 succeeded" in stderr


def test_ctrl_c_then_resume_collects_the_provider_batch_without_sending_it_again(
    tmp_path: Path, batch_name: str
) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 6)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, batch_in_progress_seconds=6)) as provider:
        env = run_env(**provider_env(provider))
        args = ["--via", "batch-api", "--poll-interval", "0.2", "-o", str(output)]
        process = start_run([str(source), *args, "--batch", batch_name], env, tmp_path)
        deadline = time.monotonic() + 120
        while provider.stats()["batches_created"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert provider.stats()["batches_created"] == 1
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert f"llmqueue run --resume {batch_name}" in stderr
        assert run_dir(batch_name).exists()

        code, stderr = run(["--resume", batch_name, "-o", str(output)], env, tmp_path)
        assert code == 2 and "resume it with --via batch-api" in stderr
        code, stderr = run(["--resume", batch_name, *args], env, tmp_path)
        stats = provider.stats()
    assert code == 0, stderr
    # The resumed run's bar counts the batch's lines, not "0/?" until a poll of this run tells.
    assert "6/6" in stderr and "/?" not in stderr, stderr
    assert (stats["batches_created"], stats["batch_lines_answered"]) == (1, 6)
    assert [r["llmqueue"]["status"] for r in read_jsonl(output)] == ["succeeded"] * 6
    stop(process)


def test_a_bad_file_is_refused_before_anything_is_uploaded(tmp_path: Path, batch_name: str) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 2)
    with source.open("a", encoding="utf-8") as out:
        out.write('{"custom_id": "q9", "model": "openai/gpt-4o-mini"}\n')
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        code, stderr = run([str(source), "--via", "batch-api", "--batch", batch_name],
                           run_env(**provider_env(provider)), tmp_path)  # fmt: skip
        stats = provider.stats()
    assert code == 2
    assert "line 3" in stderr
    assert stats["batches_created"] == 0


def test_submit_via_batch_api_answers_the_lines_into_the_users_redis(tmp_path: Path, redis_url: str) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 4)
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider), REDIS_URL=redis_url)
        base = [sys.executable, "-m", "llmqueue"]
        args = ["submit", str(source), "--via", "batch-api", "--poll-interval", "0.2", "--batch", "evals"]
        submitted = subprocess.run(
            [*base, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "evals"
        output = tmp_path / "out.jsonl"
        written = subprocess.run([*base, "results", "evals", "-o", str(output)], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert written.returncode == 0, written.stderr
        assert provider.stats()["batches_created"] == 1
    records = read_jsonl(output)
    assert [(r["custom_id"], r["llmqueue"]["via"]) for r in records] == [
        (f"q{n}", "batch-api") for n in range(4)
    ]


def test_batch_api_options_without_the_tier_are_refused(tmp_path: Path) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 1)
    code, stderr = run([str(source), "--enqueued-token-limit", "90000"], run_env(), tmp_path, timeout=60)
    assert code == 2
    assert "apply to --via batch-api" in stderr


def test_skip_invalid_via_batch_api_writes_the_rejected_lines_to_rejects(
    tmp_path: Path, batch_name: str
) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 3)
    with source.open("a", encoding="utf-8") as out:
        out.write('{"custom_id": "bad", "messages": "not a list"}\n')
    output, rejects = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider))
        args = [str(source), "-o", str(output), "--via", "batch-api", "--poll-interval", "0.2"]
        args += ["--batch", batch_name, "--skip-invalid", "--rejects", str(rejects)]
        code, stderr = run(args, env, tmp_path)
    assert code == 0, stderr
    assert [r["custom_id"] for r in read_jsonl(output)] == ["q0", "q1", "q2"]
    assert "1 line(s) rejected" in stderr
    assert [json.loads(line)["line"] for line in rejects.read_text(encoding="utf-8").splitlines()] == [4]


REGISTER = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from llmqueue import keys\n"
    "from llmqueue.batches.control import Batches\n"
    "from llmqueue.batches.input import iter_jobs\n"
    "from llmqueue.producer import Producer\n"
    "from llmqueue.settings import Settings\n"
    "async def main():\n"
    "    async with Producer(Settings(redis_url=sys.argv[1])) as producer:\n"
    "        batches = Batches(producer.store)\n"
    "        jobs = list(iter_jobs(Path(sys.argv[2]), batch_id='evals'))\n"
    "        await batches.register('evals', jobs, source=Path(sys.argv[2]))\n"
    "        await producer.store.redis.hset(keys.batch('evals'), 'via', 'batch-api')\n"
    "asyncio.run(main())\n"
)
"""Registers the lines of a file as Batch API batch ``evals`` in a Redis, as ``--via batch-api`` does."""


def register_batch_api_batch(redis_url: str, source: Path) -> dict[str, str]:
    env = run_env()
    subprocess.run([sys.executable, "-c", REGISTER, redis_url, str(source)], env=env, check=True, timeout=60)
    return env


def llmqueue(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmqueue", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_stalled_batch_api_batch_is_told_to_go_on_through_the_batch_api(
    tmp_path: Path, redis_url: str
) -> None:
    # A Batch API batch whose process is gone: its lines are registered, never queued for workers.
    env = register_batch_api_batch(redis_url, eval_file(tmp_path / "eval.jsonl", 2))

    args = ["results", "evals", "--wait", "-o", "out.jsonl", "--redis-url", redis_url]
    done = subprocess.run(
        [sys.executable, "-m", "llmqueue", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert "llmqueue submit FILE --batch evals --via batch-api" in done.stderr, done.stderr
    assert "llmqueue run --resume evals --via batch-api" in done.stderr


def test_cancel_of_a_batch_api_batch_ends_its_jobs_and_status_and_results_agree(
    tmp_path: Path, redis_url: str
) -> None:
    env = register_batch_api_batch(redis_url, eval_file(tmp_path / "eval.jsonl", 3))

    cancelled = llmqueue(["cancel", "evals", "--redis-url", redis_url], env, tmp_path)
    status = llmqueue(["status", "evals", "--json", "--redis-url", redis_url], env, tmp_path)
    results = llmqueue(
        ["results", "evals", "--wait", "-o", "out.jsonl", "--redis-url", redis_url], env, tmp_path
    )

    assert cancelled.returncode == 0, cancelled.stderr
    assert "3 job(s) cancelled" in cancelled.stdout + cancelled.stderr
    counts = json.loads(status.stdout)
    assert (counts["cancelled"], counts["queued"], counts["done"]) == (3, 0, True), counts
    assert results.returncode in (0, 1), results.stderr  # written, not stalled (exit 2)
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["llmqueue"]["status"] for r in records] == ["cancelled"] * 3


def test_an_unreachable_batch_api_ends_in_one_line_and_the_batch_can_be_resumed(
    tmp_path: Path, batch_name: str
) -> None:
    source = eval_file(tmp_path / "eval.jsonl", 2)
    env = run_env(
        LLM_MODEL="openai/gpt-4o-mini", LLM_BASE_URL="http://127.0.0.1:9/v1", LLM_API_KEY=TEST_API_KEY
    )
    args = [str(source), "-o", str(tmp_path / "out.jsonl"), "--via", "batch-api", "--batch", batch_name]

    code, stderr = run(args, env, tmp_path)

    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert "the provider's Batch API failed" in stderr
    assert f"llmqueue run --resume {batch_name} --via batch-api" in stderr
    assert run_dir(batch_name).exists()  # its embedded Redis is kept for the resume
