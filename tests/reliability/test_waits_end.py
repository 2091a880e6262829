"""Every wait ends: an empty file, a job with no worker, a batch that lost jobs; and the small faults a
new user meets (a gzip file, an unknown batch's results, line separators in answers).

The ``llmqueue`` command runs as a real process against a real Redis; the workers are processes too.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.errors import JobNotFoundError
from llmqueue.producer import GONE_CHECK, Producer
from llmqueue.settings import Settings
from llmqueue.settings.worker import BatchConfig
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import child_env, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

MODEL = "openai/sim-model"


def llmqueue(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmqueue", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def said(done: subprocess.CompletedProcess[str]) -> str:
    """What the command wrote to stderr, rich's line wrapping undone."""
    return " ".join(done.stderr.split())


def _lines(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


async def test_an_empty_or_blank_file_is_refused_at_once_by_run_and_submit(
    redis_url: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\t\n")
    env = child_env(REDIS_URL=redis_url, LLM_MODEL=MODEL)
    for path in (empty, blank):
        began = time.monotonic()
        run = llmqueue("run", str(path), "-o", str(tmp_path / "out.jsonl"), cwd=tmp_path, env=env)
        submit = llmqueue("submit", str(path), "--batch", "nothing", cwd=tmp_path, env=env)
        took = time.monotonic() - began
        for done in (run, submit):
            assert done.returncode == 2, done.stderr
            assert "holds no requests" in said(done), done.stderr
            assert "Traceback" not in done.stderr
        assert took < 30
    assert not (tmp_path / "out.jsonl").exists()


async def test_a_result_awaited_with_no_worker_running_says_so_within_seconds(
    redis_url: str, tmp_path: Path
) -> None:
    env = child_env(REDIS_URL=redis_url, LLM_MODEL=MODEL)
    process = subprocess.Popen(
        [sys.executable, "-m", "llmqueue", "complete", "Hello"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    began = time.monotonic()
    try:
        await asyncio.sleep(12)
        assert process.poll() is None  # it still waits (a worker may yet come) ...
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    # ... but has said why nothing happens.
    assert "no llmqueue worker is running on queue llmqueue:queue" in " ".join(stderr.split()), stderr
    assert time.monotonic() - began < 60


async def test_results_wait_ends_naming_jobs_that_are_neither_queued_nor_done(
    redis_url: str, tmp_path: Path
) -> None:
    batch = _lines(
        tmp_path / "questions.jsonl",
        [
            {"custom_id": f"q{n}", "model": MODEL, "messages": [{"role": "user", "content": f"Frage {n}"}]}
            for n in range(6)
        ],
    )
    out = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        async with Producer(make_settings(redis_url, provider.base_url)) as producer:
            batches = Batches(producer.store)
            await batches.submit_file(batch, "lossy")
            # One job vanishes from the queue (its payload expired, or a submission was cut short).
            lost = "lossy:00000004"
            await producer.redis.delete(keys.arq_job(lost))
            await producer.redis.zrem("llmqueue:queue", lost)
            env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
            with worker_processes(env, tmp_path) as workers:
                await workers.start_ready(1)
                began = time.monotonic()
                waited = llmqueue(
                    "results", "lossy", "-o", str(out), "--wait", cwd=tmp_path, env=env, timeout=90
                )
                took = time.monotonic() - began
                # Submitting the file again to the same batch queues the lost job: the batch completes.
                report = await batches.submit_file(batch, "lossy")
                final = await asyncio.wait_for(batches.wait("lossy", interval=0.1), 60)
    print(f"\nresults --wait on a batch with a lost job ended after {took:.1f} s: {said(waited)[-300:]!r}")
    assert waited.returncode == 2, waited.stderr
    assert "neither queued, running nor finished" in said(waited) and lost in said(waited)
    assert took < 60
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert report.submitted == 1 and report.already_known == 5
    assert final.done and final.succeeded == 6 and final.total == 6


async def test_small_faults_gzip_unknown_batch_and_line_separators(redis_url: str, tmp_path: Path) -> None:
    records = [
        {"custom_id": "ls", "model": MODEL, "messages": [{"role": "user", "content": "one\u2028two"}]},
        {"custom_id": "nel", "model": MODEL, "messages": [{"role": "user", "content": "three\x85four"}]},
        {"custom_id": "ps", "model": MODEL, "messages": [{"role": "user", "content": "five\u2029six"}]},
    ]
    plain = _lines(tmp_path / "odd.jsonl", records)
    packed = tmp_path / "odd.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    out = tmp_path / "out.jsonl"
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
        compressed = llmqueue("submit", str(packed), cwd=tmp_path, env=env)
        unknown = llmqueue("results", "nosuch", "-o", str(out), cwd=tmp_path, env=env)
        submitted = llmqueue("submit", str(plain), "--batch", "seps", cwd=tmp_path, env=env)
        with worker_processes(env, tmp_path) as workers:
            await workers.start_ready(1)
            written = llmqueue("results", "seps", "-o", str(out), "--wait", cwd=tmp_path, env=env, timeout=90)
    assert compressed.returncode == 2 and "gzip-compressed" in said(compressed), compressed.stderr
    assert unknown.returncode == 2 and "no batch named 'nosuch'" in said(unknown), unknown.stderr
    assert not out.with_name("out.jsonl.partial").exists()
    assert submitted.returncode == 0 and submitted.stderr.index("batch seps") < submitted.stderr.index(
        "queued"
    )
    assert written.returncode == 0, written.stderr
    text = out.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3
    answers = [
        json.loads(line)["response"]["body"]["choices"][0]["message"]["content"] for line in text.splitlines()
    ]
    assert answers == ["echo: one\u2028two", "echo: three\x85four", "echo: five\u2029six"]


async def test_a_worker_refused_by_redis_exits_at_once_with_one_line(redis_url: str, tmp_path: Path) -> None:
    host = redis_url.removeprefix("redis://").split("/")[0]
    wrong = {
        "password": f"redis://alice:not-her-password@{host}/0",
        "database": f"redis://{host}/999",
    }
    for what, url in wrong.items():
        began = time.monotonic()
        done = llmqueue("worker", cwd=tmp_path, env=child_env(REDIS_URL=url, LLM_MODEL=MODEL), timeout=60)
        took = time.monotonic() - began
        print(f"\nworker with a wrong {what}: exit {done.returncode} after {took:.1f} s: {said(done)!r}")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 4, done.stderr
        assert "refused" in said(done) and "not-her-password" not in done.stderr
        assert took < 20


async def test_a_worker_whose_redis_password_changes_mid_run_stops_with_one_line(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    user, password = f"llmqueue-test-{uuid.uuid4().hex[:8]}", "first-password-123"
    await redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        host_and_db = redis_url.removeprefix("redis://")
        env = child_env(REDIS_URL=f"redis://{user}:{password}@{host_and_db}", LLM_MODEL=MODEL)
        with worker_processes(env, tmp_path) as workers:
            (worker,) = await workers.start_ready(1)
            await redis.execute_command("ACL", "SETUSER", user, "resetpass", ">another-password-456")
            began = time.monotonic()
            await redis.execute_command("CLIENT", "KILL", "USER", user)
            code = await worker.wait_exit(60)
            took = time.monotonic() - began
        err = worker.stderr()
    finally:
        await redis.execute_command("ACL", "DELUSER", user)
    refused = [line for line in err.splitlines() if "refused" in line]
    print(f"\nworker whose password changed: exit {code} after {took:.1f} s: {refused[-1:]!r}")
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and password not in err
    assert "refused this worker" in err and "the worker stopped" in err
    assert err.count("unavailable") <= 1  # not retried as a transient outage
    assert took < 45


async def test_an_awaited_job_redis_no_longer_holds_ends_the_wait(redis: Redis, settings: Settings) -> None:
    async with Producer(settings) as producer:
        (handle,) = await producer.submit_many([{"messages": [{"role": "user", "content": "lost"}]}])
        unknown = producer.handle("never-submitted")
        # The job's payload expires before any worker takes it (as job_ttl would have it).
        await redis.delete(keys.arq_job(handle.job_id))
        began = time.monotonic()
        for waiting in (handle, unknown):
            with pytest.raises(JobNotFoundError, match="not in Redis"):
                await waiting.result(timeout=30)
        took = time.monotonic() - began
    assert took < 2 * GONE_CHECK + 2


async def test_cancelling_50000_queued_jobs_takes_seconds(redis_url: str, tmp_path: Path) -> None:
    jobs = 50_000
    source = _lines(
        tmp_path / "many.jsonl",
        [{"messages": [{"role": "user", "content": f"Frage {n}"}]} for n in range(jobs)],
    )
    # A window as big as the file: every line is queued at once.
    settings = make_settings(redis_url, "http://127.0.0.1:9/v1").model_copy(
        update={"batch": BatchConfig(window=jobs)}
    )
    async with Producer(settings) as producer:
        batches = Batches(producer.store, settings)
        await batches.submit_file(source, "many")
        began = time.monotonic()
        cancelled = llmqueue("cancel", "many", cwd=tmp_path, env=child_env(REDIS_URL=redis_url), timeout=120)
        took = time.monotonic() - began
        status = await batches.status("many")
        queued = await producer.redis.zcard("llmqueue:queue")
    print(f"\ncancel of {jobs} queued jobs: {took:.1f} s ({said(cancelled)[-60:]!r})")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{jobs} job(s) cancelled" in said(cancelled)
    assert status.cancelled == jobs and status.done and queued == 0
    assert took < 60  # 150 s before, one job at a time
