"""The ``llmqueue`` command: in process with typer's CliRunner, and as a real process where exit codes
and error messages come from ``main()``. Redis is the test session's; workers and providers are real."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
from redis import Redis
from typer.core import TyperGroup
from typer.testing import Result

import llmqueue
from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.cli import app
from llmqueue.ops.processes import start_worker, stop_processes
from llmqueue.producer import Producer
from llmqueue.settings import WorkerConfig
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig, run_provider
from tests.support.cli import cli, runner
from tests.support.imports import litellm_imported_by
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

REQUIRED_COMMANDS = [
    "worker",
    "complete",
    "submit",
    "status",
    "results",
    "cancel",
    "retry",
    "run",
    "simulate-provider",
]


def command_names() -> list[str]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return sorted(group.commands)


COMMANDS = command_names()
QUEUE = WorkerConfig().queue_name
REPO_ROOT = Path(llmqueue.__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT = 60
DRAIN_TIMEOUT = 30.0

pytestmark = pytest.mark.usefixtures("clean_environment")


# ---- helpers -------------------------------------------------------------------------------------


def process_env(**extra: str) -> dict[str, str]:
    """This (cleaned) environment for a child process, with llmqueue importable, and ``extra``."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def llmqueue_process(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m llmqueue ARGS`` as a real process, through ``main()``."""
    return subprocess.run(
        [sys.executable, "-m", "llmqueue", *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=cwd,
        env=process_env(**env),
    )


def write_lines(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    """A JSONL file of ``lines``: dicts as JSON, strings as they are (for bad lines)."""
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def custom_ids(count: int) -> list[str]:
    """Custom ids whose input order is the reverse of their sorted order."""
    return [f"item-{count - n:03d}" for n in range(count)]


def chat_file(path: Path, count: int) -> Path:
    lines: list[dict[str, Any] | str] = [
        {"custom_id": cid, "messages": [{"role": "user", "content": f"question {n}"}]}
        for n, cid in enumerate(custom_ids(count))
    ]
    return write_lines(path, lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def submit(redis_url: str, path: Path, batch_id: str, *extra: str) -> Result:
    return cli("submit", str(path), "--batch", batch_id, "--redis-url", redis_url, *extra)


def status_json(redis_url: str, batch_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli("status", batch_id, "--json", "--redis-url", redis_url).stdout)
    return data


def queued_in_redis(redis_url: str) -> int:
    with Redis.from_url(redis_url) as client:
        return int(client.zcard(QUEUE))


async def _drain(redis_url: str, batch_id: str, fail_first: int) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        if fail_first:
            provider.fail_next(fail_first, 400)
        settings = make_settings(redis_url, provider.base_url)
        async with Producer(settings) as producer, running_worker(settings):
            await asyncio.wait_for(Batches(producer.store).wait(batch_id, interval=0.02), DRAIN_TIMEOUT)


def drain(redis_url: str, batch_id: str, *, fail_first: int = 0) -> None:
    """Run an in-process worker (its settings name the model) until every job of the batch has a
    result; the provider answers the first ``fail_first`` calls with a 400."""
    asyncio.run(_drain(redis_url, batch_id, fail_first))


# ---- help ----------------------------------------------------------------------------------------


def test_the_app_has_the_batch_and_worker_commands() -> None:
    assert set(REQUIRED_COMMANDS) <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_works_for_every_command(command: str) -> None:
    result = cli(command, "--help")
    assert "Usage:" in result.stdout
    assert command in result.stdout


def test_main_help_lists_every_command(tmp_path: Path) -> None:
    process = llmqueue_process("--help", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert all(command in process.stdout for command in COMMANDS)


def test_help_texts_keep_config_section_names(tmp_path: Path) -> None:
    process = llmqueue_process("run", "--help", cwd=tmp_path, COLUMNS="200")
    assert process.returncode == 0, process.stderr
    assert "(default: [llm] model)" in process.stdout
    assert "A named [llm.<name>] group." in process.stdout


def test_main_without_arguments_prints_the_help(tmp_path: Path) -> None:
    process = llmqueue_process(cwd=tmp_path)
    assert "Usage:" in process.stdout and "submit" in process.stdout
    assert "Traceback" not in process.stderr


# ---- submit --------------------------------------------------------------------------------------


def test_submit_prints_the_batch_id_and_queues_every_line(redis_url: str, tmp_path: Path) -> None:
    result = cli("submit", str(chat_file(tmp_path / "prompts.jsonl", 7)), "--redis-url", redis_url)

    batch_id = result.stdout.strip()
    assert re.fullmatch(r"prompts-\d{8}-\d{6}-[0-9a-f]{8}", batch_id), result.stdout
    assert "7 job(s) queued" in result.stderr
    assert queued_in_redis(redis_url) == 7
    assert status_json(redis_url, batch_id)["total"] == 7


def test_submit_with_batch_prints_that_id(redis_url: str, tmp_path: Path) -> None:
    result = submit(redis_url, chat_file(tmp_path / "in.jsonl", 3), "my-batch")
    assert result.stdout == "my-batch\n"
    assert status_json(redis_url, "my-batch")["total"] == 3


def test_submitting_the_same_file_again_queues_nothing_new(redis_url: str, tmp_path: Path) -> None:
    source = chat_file(tmp_path / "in.jsonl", 4)
    submit(redis_url, source, "again")
    result = submit(redis_url, source, "again")
    assert "0 job(s) queued, 4 already known" in result.stderr
    assert queued_in_redis(redis_url) == 4
    assert status_json(redis_url, "again")["total"] == 4


def test_submit_of_a_file_with_a_bad_line_exits_2_naming_the_line_and_queues_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}]}
    source = write_lines(tmp_path / "bad.jsonl", [good, good, "{not json", good])

    process = llmqueue_process(
        "submit", str(source), "--batch", "bad", "--redis-url", redis_url, cwd=tmp_path
    )

    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert "Traceback" not in process.stderr
    first, *rest = process.stderr.splitlines()
    assert first.startswith("llmqueue: ")
    assert str(source) in first and "nothing was enqueued" in first
    assert any(line.strip().startswith("line 3: not valid JSON") for line in rest), process.stderr
    with Redis.from_url(redis_url) as client:
        assert client.zcard(QUEUE) == 0
        assert not client.exists(keys.batch("bad"), keys.batch_jobs("bad"))
        assert client.zcard(keys.batches()) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["run", "--rpm", "-5"], "--rpm must be above 0, got -5"),
        (["run", "--dry-run", "--simulate-provider", "--tpm", "0"], "--tpm must be above 0, got 0"),
        (["run", "--concurrency", "0"], "--concurrency must be above 0, got 0"),
        (["run", "--max-cost", "-1"], "--max-cost must be above 0, got -1"),
        (["submit", "--max-tokens", "-5"], "--max-tokens must be above 0, got -5"),
    ],
)
def test_a_flag_given_zero_or_less_exits_2_naming_it_before_anything_starts(
    redis_url: str, tmp_path: Path, flags: list[str], message: str
) -> None:
    # Before: a traceback (--dry-run), a Redis and a worker started to fail on LLM_RPM (run), or every
    # job of the batch cancelled for its budget (--max-cost -1).
    command, *options = flags
    source = chat_file(tmp_path / "prompts.jsonl", 3)
    batch = f"flags-{command}-{len(options)}"
    process = llmqueue_process(
        command, str(source), *options, "--batch", batch, "--redis-url", redis_url, cwd=tmp_path
    )

    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    assert process.stderr.strip() == f"llmqueue: {message}"
    with Redis.from_url(redis_url) as client:
        assert client.zcard(QUEUE) == 0
        assert client.zcard(keys.batches()) == 0


def test_the_interrupt_hint_repeats_the_runs_options_but_never_a_redis_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmqueue.batches import run as run_module

    async def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_batch", interrupted)
    source = chat_file(tmp_path / "prompts.jsonl", 2)
    url = "redis://:s3cret-pass@127.0.0.1:6390/2"
    args = ["run", str(source), "--batch", "hint", "--redis-url", url, "--tpm", "2500.5", "--workers", "3"]

    result = runner.invoke(app, args)

    assert result.exit_code == 130
    hint = result.output.split("Resume with: ", 1)[1].strip()
    assert hint == (
        "llmqueue run --resume hint --workers 3 --tpm 2500.5 "
        "(and --redis-url with its password, not printed here)"
    )
    assert "s3cret" not in result.output


def test_error_message_with_brackets_from_the_file_is_printed_as_it_is(
    redis_url: str, tmp_path: Path
) -> None:
    line = {"custom_id": "[/b] [llm]", "messages": [{"role": "user", "content": "hi"}]}
    source = write_lines(tmp_path / "dup.jsonl", [line, line])

    process = llmqueue_process("submit", str(source), "--redis-url", redis_url, cwd=tmp_path)

    assert "Traceback" not in process.stderr
    assert process.returncode == 2
    assert "  line 2: duplicate custom_id '[/b] [llm]'" in process.stderr.splitlines()


def test_submit_skip_invalid_queues_the_good_lines_and_writes_the_rejects_file(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal: the path must still come out whole
    good = {"messages": [{"role": "user", "content": "hi"}]}
    source = write_lines(tmp_path / "mixed.jsonl", [good, "[1, 2]", good, "{not json", good])

    result = submit(redis_url, source, "mixed", "--skip-invalid")

    rejects = tmp_path / "mixed.rejected.jsonl"
    assert f"2 line(s) rejected, written to {rejects}\n" in result.stderr
    assert "3 job(s) queued" in result.stderr
    assert [(r["line"], r["raw"]) for r in read_jsonl(rejects)] == [(2, "[1, 2]"), (4, "{not json")]
    assert read_jsonl(rejects)[0]["reason"] == "expected a JSON object, got an array"
    assert queued_in_redis(redis_url) == 3


def test_submit_skip_invalid_writes_rejects_where_asked(redis_url: str, tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}]}
    source = write_lines(tmp_path / "mixed.jsonl", [good, "{not json"])
    rejects = tmp_path / "elsewhere.jsonl"

    submit(redis_url, source, "mixed", "--skip-invalid", "--rejects", str(rejects))

    assert [r["line"] for r in read_jsonl(rejects)] == [2]
    assert not (tmp_path / "mixed.rejected.jsonl").exists()


# ---- status, cancel ------------------------------------------------------------------------------


def test_status_json_has_the_counts(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 5), "counted")

    data = status_json(redis_url, "counted")

    assert data["batch_id"] == "counted"
    counts = {name: data[name] for name in ("total", "queued", "running", "succeeded", "failed", "cancelled")}
    assert counts == {"total": 5, "queued": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert data["finished"] == 0 and data["done"] is False
    assert data["source"] == str((tmp_path / "in.jsonl").resolve())


def test_status_shows_a_table(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 5), "tabled")
    result = cli("status", "tabled", "--redis-url", redis_url)
    assert "batch tabled" in result.stdout
    assert re.search(r"total\s+5", result.stdout) and re.search(r"queued\s+5", result.stdout)


def test_status_without_a_batch_shows_queued_jobs_per_priority(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "eval.jsonl", 4), "eval")
    submit(redis_url, chat_file(tmp_path / "urgent.jsonl", 2), "urgent", "--priority", "interactive")
    submit(redis_url, chat_file(tmp_path / "seven.jsonl", 1), "seven", "--priority", "7", "--weight", "2")

    table = cli("status", "--redis-url", redis_url).stdout
    data = json.loads(cli("status", "--json", "--redis-url", redis_url).stdout)

    assert re.search(r"2 \(interactive\)\W+2\W+0\W+0", table) and re.search(r"0 \(batch\)\W+4", table)
    assert [(row["priority"], row["ready"], row["running"]) for row in data["priorities"]] == [
        (7, 1, 0),
        (2, 2, 0),
        (0, 4, 0),
    ]


def test_submit_rejects_an_unknown_priority_name(redis_url: str, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "submit",
            str(chat_file(tmp_path / "in.jsonl", 1)),
            "--priority",
            "urgent",
            "--redis-url",
            redis_url,
        ],
    )
    assert result.exit_code == 2
    assert "priority 'urgent' is not one of batch=0, default=1, interactive=2" in result.output


def test_status_of_an_unknown_batch_exits_2_with_a_clear_message(redis_url: str, tmp_path: Path) -> None:
    process = llmqueue_process("status", "no-such-batch", "--redis-url", redis_url, cwd=tmp_path)
    assert process.returncode == 2
    assert process.stderr.strip() == "llmqueue: no batch named 'no-such-batch' in this Redis"


def test_cancel_then_status_shows_every_queued_job_cancelled(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 6), "doomed")

    result = cli("cancel", "doomed", "--redis-url", redis_url)

    assert "6 job(s) cancelled" in result.stderr
    data = status_json(redis_url, "doomed")
    assert (data["cancelled"], data["queued"], data["done"], data["cancel_requested"]) == (6, 0, True, True)
    assert queued_in_redis(redis_url) == 0
    table = cli("status", "doomed", "--redis-url", redis_url).stdout
    assert "cancelled by request" in table


def test_cancel_of_a_batch_without_provider_batches_does_not_import_litellm(
    redis_url: str, tmp_path: Path
) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 2), "live")

    done, imported = litellm_imported_by(["cancel", "live", "--redis-url", redis_url], env=process_env())

    assert done.returncode == 0, done.stderr
    assert "2 job(s) cancelled" in done.stdout + done.stderr
    assert not imported


def test_status_watch_returns_once_the_batch_is_done(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 2), "watched")
    cli("cancel", "watched", "--redis-url", redis_url)
    result = cli("status", "watched", "--watch", "--redis-url", redis_url)
    assert re.search(r"cancelled\s+2", result.stdout)


# ---- results, retry ------------------------------------------------------------------------------


def test_results_writes_openai_batch_output_in_input_order(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal: the path must still come out whole
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 12), "done")
    drain(redis_url, "done")
    output = tmp_path / "out" / "results.jsonl"

    result = cli("results", "done", "-o", str(output), "--redis-url", redis_url)

    assert result.stderr == f"results written to {output}\n"
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == custom_ids(12)
    assert [r["id"] for r in records] == [f"batch_req_done:{n:08d}" for n in range(1, 13)]
    for n, record in enumerate(records):
        assert record["error"] is None
        assert record["response"]["status_code"] == 200
        assert record["response"]["body"]["choices"][0]["message"]["content"] == f"echo: question {n}"
        assert record["llmqueue"]["status"] == "succeeded"
        assert record["llmqueue"]["attempts"] == 1
    assert not output.with_name("results.jsonl.partial").exists()


def test_results_of_unfinished_jobs_are_written_as_missing(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 3), "pending")
    output = tmp_path / "out.jsonl"

    result = cli("results", "pending", "-o", str(output), "--redis-url", redis_url)

    assert "(3 not succeeded)" in result.stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == custom_ids(3)
    assert {r["error"]["code"] for r in records} == {"missing"}


def test_results_failed_only_writes_only_the_failed_jobs(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 8), "mixed")
    drain(redis_url, "mixed", fail_first=3)
    everything, failed = tmp_path / "all.jsonl", tmp_path / "failed.jsonl"

    cli("results", "mixed", "-o", str(everything), "--redis-url", redis_url)
    result = cli("results", "mixed", "-o", str(failed), "--failed-only", "--redis-url", redis_url)

    assert "(3 not succeeded)" in result.stderr
    all_records = read_jsonl(everything)
    expected = [r for r in all_records if r["llmqueue"]["status"] != "succeeded"]
    assert len(all_records) == 8 and len(expected) == 3
    records = read_jsonl(failed)
    assert records == expected  # the same records, in input order
    for record in records:
        assert record["llmqueue"]["status"] == "failed"
        assert record["error"] is None  # an HTTP error answer is the record's response, as OpenAI writes it
        assert record["response"]["status_code"] == 400
        assert record["llmqueue"]["errors"][-1]["kind"] == "bad_request"


def test_retry_failed_queues_the_failed_jobs_again(redis_url: str, tmp_path: Path) -> None:
    submit(redis_url, chat_file(tmp_path / "in.jsonl", 6), "flaky")
    drain(redis_url, "flaky", fail_first=2)
    assert status_json(redis_url, "flaky")["failed"] == 2

    result = cli("retry", "flaky", "--failed", "--redis-url", redis_url)

    assert "2 failed job(s) queued again" in result.stderr
    assert queued_in_redis(redis_url) == 2
    drain(redis_url, "flaky")
    data = status_json(redis_url, "flaky")
    assert (data["succeeded"], data["failed"], data["done"]) == (6, 0, True)


def test_retry_without_failed_exits_2_saying_what_to_type(redis_url: str, tmp_path: Path) -> None:
    process = llmqueue_process("retry", "some-batch", "--redis-url", redis_url, cwd=tmp_path)
    assert process.returncode == 2
    assert (
        process.stderr.strip()
        == "llmqueue: say what to retry: llmqueue retry BATCH --failed (or --cancelled)"
    )


# ---- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[llm]\nretry_min_wait = -1\n", "[llm] retry_min_wait: Input should be greater than or equal to 0"),
        ("[worker]\nmax_jobz = 3\n", "[worker] max_jobz: unknown key"),
    ],
)
def test_invalid_config_file_exits_2_naming_the_key_and_the_file(
    redis_url: str, tmp_path: Path, toml: str, expected: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml, encoding="utf-8")

    process = llmqueue_process(
        "status", "any", "--config", str(config), "--redis-url", redis_url, cwd=tmp_path
    )

    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert process.stderr.splitlines() == [f"llmqueue: invalid settings in {config}:", f"  {expected}"]


def test_missing_config_file_exits_2_naming_it(redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "nowhere.toml"
    process = llmqueue_process(
        "status", "any", "--config", str(config), "--redis-url", redis_url, cwd=tmp_path
    )
    assert process.returncode == 2
    assert process.stderr.strip() == f"llmqueue: config file {config} does not exist"


def test_config_toml_in_the_working_directory_is_read(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f'redis_url = "{redis_url}"\n', encoding="utf-8")
    result = cli("submit", str(chat_file(tmp_path / "in.jsonl", 2)), "--batch", "from-config")
    assert result.stdout == "from-config\n"
    assert queued_in_redis(redis_url) == 2


# ---- complete ------------------------------------------------------------------------------------


@contextmanager
def worker_process(redis_url: str, base_url: str, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = process_env(
        LLM_MODEL="openai/sim-model",
        LLM_BASE_URL=base_url,
        LLM_API_KEY=TEST_API_KEY,
        WORKER_POLL_DELAY="0.01",
        WORKER_WARM_UP="false",
    )
    process = start_worker(env, args=["--redis-url", redis_url], cwd=cwd, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        stop_processes([process], timeout=15)
        assert process.stderr is not None
        process.stderr.close()


def test_complete_prints_the_result_of_a_worker_process(redis_url: str, tmp_path: Path) -> None:
    with (
        ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider,
        worker_process(redis_url, provider.base_url, tmp_path) as worker,
    ):
        result = cli("complete", "hi there", "--max-tokens", "5", "--timeout", "30", "--redis-url", redis_url)
        assert worker.poll() is None, "the worker died"

    data = json.loads(result.stdout)
    assert data["status"] == "succeeded"
    assert data["model"] == "openai/sim-model"
    assert data["response"]["choices"][0]["message"]["content"] == "echo: hi there"
    assert data["usage"]["completion_tokens"] <= 5


def test_complete_without_a_worker_exits_2_after_its_timeout(redis_url: str, tmp_path: Path) -> None:
    process = llmqueue_process("complete", "hi", "--timeout", "0.5", "--redis-url", redis_url, cwd=tmp_path)
    assert process.returncode == 2
    assert re.fullmatch(r"llmqueue: job \S+ has no result after 0.5s", process.stderr.strip()), process.stderr
