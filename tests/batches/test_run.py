"""``llmqueue run`` end to end, as the user runs it: a real process that starts its own redis-server
and worker processes, against the simulated provider in a process of its own."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import llmqueue
from llmqueue.ops.local_cluster import run_dir
from llmqueue.simulator.demo import demo_provider
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.settings import TEST_API_KEY

REPO_ROOT = Path(llmqueue.__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "prompts.jsonl"
RUN_TIMEOUT = 150.0
STOP_TIMEOUT = 30.0
SIM_MODEL = "openai/sim-model"
FAST_RETRIES = {
    "LLM_RETRY_MIN_WAIT": "0.2",
    "LLM_RETRY_MAX_WAIT": "1",
    "LLM_RETRY_MULTIPLIER": "0.2",
    "LLM_NUM_RETRIES": "8",
}

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


# ---- helpers -------------------------------------------------------------------------------------


def run_env(**settings: str) -> dict[str, str]:
    """The environment of ``llmqueue run`` (and so of its workers): no REDIS_URL, LLM_*, WORKER_* or
    LLMQUEUE_CONFIG from the machine, only ``settings``; llmqueue importable; unwrapped messages."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LLM_", "WORKER_")) and name not in ("REDIS_URL", "LLMQUEUE_CONFIG")
    }
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, "COLUMNS": "400", **settings}


def provider_env(provider: ProviderProcess, api_key: str = TEST_API_KEY) -> dict[str, str]:
    """Worker settings that point at ``provider``."""
    return {"LLM_MODEL": SIM_MODEL, "LLM_BASE_URL": provider.base_url, "LLM_API_KEY": api_key}


def start_run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmqueue", "run", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    """Wait for ``process``; on timeout interrupt it (so it stops its workers and Redis), then fail."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"llmqueue run did not finish within {timeout:g} s")
    return process.returncode, stderr


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=STOP_TIMEOUT + 15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    """``llmqueue run ARGS`` to the end: its exit code and stderr."""
    return finish(start_run(args, env, cwd), timeout)


def chat_file(path: Path, count: int) -> tuple[Path, list[str]]:
    """A file of ``count`` chat requests, and its custom ids (in file order, not sorted order)."""
    ids = [f"req-{count - n:04d}" for n in range(count)]
    with path.open("w", encoding="utf-8") as out:
        for n, custom_id in enumerate(ids):
            line = {"custom_id": custom_id, "messages": [{"role": "user", "content": f"question {n}"}]}
            out.write(json.dumps(line) + "\n")
    return path, ids


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and is_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def batch_name() -> Iterator[str]:
    """A batch id no other run on this machine uses; its run directory and Redis go afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    directory = run_dir(name)
    for pid in processes_mentioning(str(directory)):  # a redis-server left by a failed run
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def linux_proc() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to look for leftover processes")


# ---- the issue's proof: 500 lines through 429s ---------------------------------------------------


def test_500_lines_through_provider_429s_all_succeed_in_input_order(tmp_path: Path, batch_name: str) -> None:
    source, ids = chat_file(tmp_path / "big.jsonl", 500)
    output = tmp_path / "out.jsonl"
    # The workers may send 40 requests/s; the provider takes 20/s and answers the rest with 429. It states
    # no limit in its headers, or the workers would learn its 20/s and send no more.
    config = ProviderConfig(
        api_key=TEST_API_KEY, rpm=1200, latency=0.05, latency_jitter=0.5, rate_limit_headers="none"
    )
    with ProviderProcess(config) as provider:
        # Half the calls are refused, so a line may meet many 429s in a row: retries enough for all.
        retries = {**FAST_RETRIES, "LLM_NUM_RETRIES": "20"}
        env = run_env(**provider_env(provider), **retries, WORKER_POLL_DELAY="0.01")
        began = time.monotonic()
        code, stderr = run(
            [str(source), "-o", str(output), "--workers", "1", "--rpm", "2400", "--batch", batch_name],
            env,
            tmp_path,
        )
        elapsed = time.monotonic() - began
        stats = provider.stats()

    assert code == 0, stderr
    records = read_jsonl(output)
    assert len(records) == 500
    assert [r["custom_id"] for r in records] == ids
    assert all(r["error"] is None and r["llmqueue"]["status"] == "succeeded" for r in records)
    for n, record in enumerate(records):
        assert record["response"]["body"]["choices"][0]["message"]["content"] == f"echo: question {n}"
    attempts = [r["llmqueue"]["attempts"] for r in records]
    assert stats["rate_limited"] > 0
    assert any(count > 1 for count in attempts)
    # Every call the provider saw is one attempt of one job, and every 429 one failed attempt.
    assert sum(attempts) == stats["requests"]
    assert sum(count - 1 for count in attempts) == stats["rate_limited"]
    assert f"500/500 succeeded, 0 failed, 0 cancelled; {stats['requests']} requests " in stderr
    assert f"({stats['rate_limited']} answered 429)" in stderr
    assert not run_dir(batch_name).exists()
    print(
        f"\n500 lines: {stats['requests']} provider calls, {stats['rate_limited']} 429s, "
        f"at most {max(attempts)} attempts for one line, {elapsed:.1f} s"
    )


# ---- --rpm limits the models the lines name (issue 11) --------------------------------------------


def test_rpm_limits_batch_lines_that_name_another_model(tmp_path: Path, batch_name: str) -> None:
    source = tmp_path / "openai-batch.jsonl"
    with source.open("w", encoding="utf-8") as out:
        for n in range(120):
            body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": f"q {n}"}]}
            line = {"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")
    output = tmp_path / "out.jsonl"
    # The key allows 20 requests/s; its answers state no limit, so only --rpm can hold the workers to it.
    config = ProviderConfig(
        api_key=TEST_API_KEY, rpm=1200, latency=0.05, latency_jitter=0.5, rate_limit_headers="none"
    )
    with ProviderProcess(config) as provider:
        env = run_env(**provider_env(provider), **FAST_RETRIES, WORKER_POLL_DELAY="0.01")
        code, stderr = run(
            [str(source), "-o", str(output), "--workers", "2", "--rpm", "1200", "--batch", batch_name],
            env,
            tmp_path,
        )
        stats = provider.stats()

    assert code == 0, stderr
    records = read_jsonl(output)
    assert all(r["llmqueue"]["status"] == "succeeded" for r in records)
    assert {r["response"]["body"]["model"] for r in records} == {"gpt-4o-mini"}
    # Unlimited, the 120 lines would go out at once and about 100 would be answered 429; at the limit a
    # loaded machine that delays some calls more than the bucket's spread sees a few.
    assert stats["rate_limited"] <= 6, stats["rate_limited"]
    # The run's workers take seconds to import LiteLLM: while they start, the run says so instead of
    # telling the user to start a worker of their own.
    assert "start one with `llmqueue worker`" not in stderr, stderr


# ---- the README's first command ------------------------------------------------------------------


def test_simulate_provider_demo_runs_the_example_file(tmp_path: Path) -> None:
    # As the README runs it. The file's embedding lines go to another model than its chat lines: each
    # model has --rpm of its own, at the workers and at the simulated key alike, so none is refused.
    code, stderr = run([str(EXAMPLE), "--simulate-provider", "--rpm", "600"], run_env(), tmp_path)

    assert code == 0, stderr
    records = read_jsonl(tmp_path / "results.jsonl")
    expected = [json.loads(line)["custom_id"] for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 50
    assert [r["custom_id"] for r in records] == expected
    assert {r["llmqueue"]["status"] for r in records} == {"succeeded"}
    assert "50/50 succeeded" in stderr
    assert "50 requests (0 answered 429)" in stderr


def test_demo_provider_enforces_a_key_just_above_the_workers_limit() -> None:
    # rpm=60 over a 1 s bucket: the key holds ~1 request, so a second one at once is refused.
    with demo_provider(rpm=60, tpm=None, model=None) as env:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {env['LLM_API_KEY']}"}
        url = env["LLM_BASE_URL"] + "/chat/completions"
        codes = [httpx.post(url, json=body, headers=headers, timeout=10).status_code for _ in range(3)]
    assert env["LLM_MODEL"] == "openai/sim-model"
    assert codes[0] == 200
    assert 429 in codes[1:]


# ---- failures ------------------------------------------------------------------------------------


def test_failing_batch_exits_1_and_prints_a_summary_of_the_failures(tmp_path: Path, batch_name: str) -> None:
    source, ids = chat_file(tmp_path / "doomed.jsonl", 12)
    output = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider, api_key="sk-not-the-right-key"), **FAST_RETRIES)
        code, stderr = run(
            [str(source), "-o", str(output), "--workers", "1", "--batch", batch_name], env, tmp_path
        )
        stats = provider.stats()

    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert "0/12 succeeded, 12 failed, 0 cancelled" in stderr
    failure_lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith("✗")]
    assert len(failure_lines) == 10
    assert all("Incorrect API key" in line for line in failure_lines)
    assert {line.split()[1].rstrip(":") for line in failure_lines} <= set(ids)
    assert "… and 2 more" in stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == ids
    assert {r["llmqueue"]["errors"][-1]["kind"] for r in records} == {"auth"}
    assert {r["response"]["status_code"] for r in records} == {401}
    assert stats["errors"] == {"401": 12}  # a permanent error is not retried
    assert not run_dir(batch_name).exists()  # every job has its result in the output file


def test_run_of_a_file_with_a_bad_line_exits_2_naming_the_line_and_leaves_nothing(
    tmp_path: Path, batch_name: str, linux_proc: None
) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    source = tmp_path / "bad.jsonl"
    source.write_text(f"{good}\n{good}\n{{oops\n", encoding="utf-8")

    code, stderr = run([str(source), "--batch", batch_name, "--simulate-provider"], run_env(), tmp_path)

    assert code == 2
    assert "Traceback" not in stderr
    assert stderr.startswith(f"llmqueue: {source}: 1 of 3 line(s) are invalid; nothing was enqueued")
    assert "  line 3: not valid JSON" in stderr
    assert not (tmp_path / "results.jsonl").exists()
    assert processes_mentioning(str(run_dir(batch_name))) == []
    # Nothing was started that a later run would have to resume or clean up.
    assert not run_dir(batch_name).exists()


def test_run_whose_output_is_a_directory_exits_2_before_anything_starts(
    tmp_path: Path, batch_name: str
) -> None:
    # Before: every line was run and paid for, then writing the results raised IsADirectoryError.
    source, _ = chat_file(tmp_path / "three.jsonl", 3)
    code, stderr = run(
        [str(source), "-o", str(tmp_path), "--batch", batch_name, "--simulate-provider"], run_env(), tmp_path
    )

    assert code == 2, stderr
    assert stderr.startswith(f"llmqueue: --output {tmp_path} is a directory: give a file"), stderr
    assert "Traceback" not in stderr
    assert not run_dir(batch_name).exists()


def test_run_with_skip_invalid_says_where_it_wrote_the_rejected_lines(
    tmp_path: Path, batch_name: str
) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    source = tmp_path / "mixed.jsonl"
    source.write_text(f"{good}\n{{oops\n{good}\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"

    code, stderr = run(
        [
            str(source),
            "-o",
            str(output),
            "--skip-invalid",
            "--workers",
            "1",
            "--batch",
            batch_name,
            "--simulate-provider",
        ],
        run_env(),
        tmp_path,
    )

    assert code == 0, stderr
    rejects = tmp_path / "out.rejected.jsonl"
    assert f"1 line(s) rejected, written to {rejects}" in stderr  # before, run named no file
    assert [json.loads(line)["line"] for line in rejects.read_text(encoding="utf-8").splitlines()] == [2]
    assert len(read_jsonl(output)) == 2


def test_resume_of_a_batch_never_run_exits_2_and_leaves_nothing(tmp_path: Path, batch_name: str) -> None:
    code, stderr = run(["--resume", batch_name], run_env(), tmp_path)

    assert code == 2
    assert stderr.startswith(f"llmqueue: nothing to resume: batch {batch_name} is not in the embedded Redis")
    assert f"run the file again: llmqueue run FILE --batch {batch_name}" in stderr
    assert not run_dir(batch_name).exists()


def test_run_without_a_file_or_resume_exits_2(tmp_path: Path) -> None:
    code, stderr = run([], run_env(), tmp_path)
    assert code == 2
    assert stderr.strip() == "llmqueue: give the JSONL file to run, or --resume BATCH"


def test_run_against_a_given_redis_leaves_no_run_directory(
    tmp_path: Path, batch_name: str, redis_url: str
) -> None:
    source, ids = chat_file(tmp_path / "small.jsonl", 5)
    output = tmp_path / "out.jsonl"

    code, stderr = run(
        [
            str(source),
            "-o",
            str(output),
            "--batch",
            batch_name,
            "--redis-url",
            redis_url,
            "--simulate-provider",
        ],
        run_env(),
        tmp_path,
    )

    assert code == 0, stderr
    assert [r["custom_id"] for r in read_jsonl(output)] == ids
    assert not run_dir(batch_name).exists()
    # The first worker takes the five lines at once: a second would have nothing to take.
    assert "1 of 2 workers started: the run ended before another would have sped it up" in stderr


# ---- interrupt and resume ------------------------------------------------------------------------


def test_interrupted_run_stops_within_2_s_abandoning_calls_in_flight_and_resumes_each_job_once(
    tmp_path: Path, batch_name: str, linux_proc: None
) -> None:
    """Ctrl-C while calls hang at the provider: ``run`` does not wait out its workers' shutdown grace
    (30 s) for them; their jobs go back to the queue and the resume makes them again, once."""
    source, ids = chat_file(tmp_path / "long.jsonl", 300)
    output = tmp_path / "out.jsonl"
    directory = run_dir(batch_name)
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.2)) as provider:
        env = run_env(**provider_env(provider), WORKER_POLL_DELAY="0.01")
        process = start_run(
            [str(source), "-o", str(output), "--workers", "1", "--rpm", "1200", "--batch", batch_name],
            env,
            tmp_path,
        )
        try:
            deadline = time.monotonic() + 60
            while (stats := provider.stats())["succeeded"] < 50 or stats["in_flight"] == 0:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "no progress within 60 s"
                time.sleep(0.1)
            started = children_of(process.pid)  # the redis-server, the worker and its reaper
            with provider.paused():  # the calls in flight now get no answer while run stops
                time.sleep(0.3)  # run's next look at the batch (every 0.1 s) counts them
                process.send_signal(signal.SIGINT)
                interrupted = time.monotonic()
                code, stderr = finish(process, timeout=STOP_TIMEOUT)
                stopped_after = time.monotonic() - interrupted
        finally:
            stop(process)
        done_before_resume = provider.stats()["succeeded"]

        assert code == 130, stderr
        assert stopped_after < 2.0, stderr  # the issue's bound for Ctrl-C, at any stage
        assert re.search(r"; \d+ call\(s\) in flight were abandoned, a resume makes them again\.", stderr)
        # The hint carries the run's own options: resumed without them, a run met another provider
        # (or none) and other limits.
        hint = stderr.split("Resume with: ", 1)[1].strip()
        assert hint == f"llmqueue run --resume {batch_name} --output {output} --workers 1 --rpm 1200", stderr
        assert "Traceback" not in stderr
        assert len(started) == 3, started
        assert [pid for pid in started if is_alive(pid)] == []
        assert processes_mentioning(str(directory)) == []
        assert directory.is_dir()  # the embedded Redis's data, to resume from
        assert not output.exists()
        assert 50 <= done_before_resume < 300

        code, stderr = run(shlex.split(hint)[2:], env, tmp_path)
        total_calls = provider.stats()["succeeded"]

    assert code == 0, stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == ids
    assert all(r["llmqueue"]["status"] == "succeeded" for r in records)
    # Jobs finished before the interrupt were not sent again; at most those in flight then were.
    assert 300 <= total_calls <= 300 + 60
    assert not directory.exists()
    print(
        f"\ninterrupt: stopped in {stopped_after:.1f} s with {done_before_resume}/300 done; "
        f"{total_calls} provider calls in all"
    )


def test_a_live_run_does_not_import_litellm_before_its_workers_do() -> None:
    """LiteLLM's import takes seconds of CPU; the `run` process of a live batch never needs it, and
    paying it there would delay Redis, the workers and the first call."""
    script = (
        "import sys; import llmqueue.cli.batch_commands, llmqueue.batches.run, llmqueue.ops.local_cluster; "
        "print('litellm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
