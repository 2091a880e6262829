"""Metrics, job logs and the worker registry: ``worker --metrics-port/--log-format``, ``health``, ``workers``.

The metrics test runs a real worker process against the simulated provider in a process of its own and
scrapes ``/metrics`` over HTTP; the registry tests read what real workers' heartbeats wrote to Redis.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from typer.testing import CliRunner

from llmqueue import keys
from llmqueue.cli import app
from llmqueue.ops.events import JobEvent
from llmqueue.ops.logs import JobLog, JsonFormatter, RedactingFormatter, secrets_of
from llmqueue.ops.metrics import WorkerMetrics
from llmqueue.ops.processes import start_worker, stop_processes
from llmqueue.ops.registry import WorkerInfo, arq_health, live_workers, read_workers
from llmqueue.producer import Producer
from llmqueue.settings import Settings
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

MODEL = "openai/sim-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@contextmanager
def worker_process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``llmqueue worker ARGS`` with only ``env`` for settings; stopped with SIGTERM on exit."""
    process = start_worker(env, args=args, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        stop_processes([process], timeout=20)


async def wait_for_metrics(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            scrape(port)
            return
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
    raise AssertionError("the worker never served /metrics")


# ---- metrics -------------------------------------------------------------------------------------


def event(name: Any, **fields: Any) -> JobEvent:
    return JobEvent(name, "job-1", "batch-1", model=MODEL, scope=MODEL, attempt=1, priority=0, **fields)


def test_metrics_count_each_kind_of_job_event() -> None:
    metrics = WorkerMetrics()
    for e in [
        event("started"),
        event("retrying", reason="rate_limit", status_code=429, latency=0.2, wait=5.0),
        event("started"),
        event("succeeded", latency=0.4, prompt_tokens=12, completion_tokens=30, cost=0.002),
        event("started"),
        event("failed", reason="auth", status_code=401, latency=0.1),
        event("limiter_wait", wait=0.7),
        event("deferred", wait=12.0),
        event("deferred", wait=3.0, reason="cooldown"),
        JobEvent("cancelled", "job-2", "batch-1", reason="budget_exceeded"),
        JobEvent("invalid", "job-3", reason="invalid_job"),
    ]:
        metrics(e)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("llmqueue_jobs_started_total", model=MODEL, priority="0") == 3
    assert sample("llmqueue_jobs_succeeded_total", model=MODEL, priority="0") == 1
    assert sample("llmqueue_jobs_failed_total", model=MODEL, priority="0", reason="auth") == 1
    assert sample("llmqueue_jobs_failed_total", model="", priority="", reason="invalid_job") == 1
    assert sample("llmqueue_jobs_retried_total", model=MODEL, priority="0", reason="rate_limit") == 1
    assert sample("llmqueue_rate_limited_total", model=MODEL) == 1
    assert sample("llmqueue_jobs_deferred_total", model=MODEL, priority="0", reason="limiter") == 1
    assert sample("llmqueue_jobs_deferred_total", model=MODEL, priority="0", reason="cooldown") == 1
    assert sample("llmqueue_jobs_cancelled_total", reason="budget_exceeded") == 1
    assert sample("llmqueue_limiter_wait_seconds_count", model=MODEL, priority="0", where="inline") == 1
    assert sample("llmqueue_limiter_wait_seconds_sum", model=MODEL, priority="0", where="deferred") == 12.0
    assert sample("llmqueue_call_duration_seconds_count", model=MODEL) == 3
    assert sample("llmqueue_tokens_total", model=MODEL, kind="prompt") == 12
    assert sample("llmqueue_tokens_total", model=MODEL, kind="completion") == 30
    assert sample("llmqueue_cost_usd_total", model=MODEL) == pytest.approx(0.002)
    assert sample("llmqueue_in_flight", model=MODEL) == 0


def test_in_flight_counts_calls_between_started_and_their_end() -> None:
    metrics = WorkerMetrics()
    metrics(event("started"))
    metrics(event("started"))
    assert metrics.registry.get_sample_value("llmqueue_in_flight", {"model": MODEL}) == 2
    metrics(event("interrupted"))
    assert metrics.registry.get_sample_value("llmqueue_in_flight", {"model": MODEL}) == 1


def test_metrics_serve_on_a_port_with_process_series() -> None:
    metrics = WorkerMetrics()
    metrics(event("started"))
    port = metrics.serve(0, host="127.0.0.1")
    samples = scrape(port)
    assert value(samples, "llmqueue_jobs_started_total", model=MODEL) == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


async def test_worker_metrics_port_serves_counters_that_move_with_jobs(redis_url: str) -> None:
    port = free_port()
    config = ProviderConfig(api_key=TEST_API_KEY, latency=0.05)
    with ProviderProcess(config) as provider:
        env = {
            "REDIS_URL": redis_url,
            "LLM_MODEL": MODEL,
            "LLM_BASE_URL": provider.base_url,
            "LLM_API_KEY": TEST_API_KEY,
            "LLM_RPM": "300",  # 5/s, a bucket of 5: 12 calls at once must wait for the limiter
            "LLM_RETRY_MIN_WAIT": "0.1",
            "LLM_RETRY_MAX_WAIT": "0.3",
            "LLM_RETRY_MULTIPLIER": "0.1",
            "WORKER_POLL_DELAY": "0.01",
            "WORKER_WARM_UP": "false",
        }
        with worker_process(["--metrics-port", str(port), "--log-format", "json"], env) as process:
            await wait_for_metrics(port, process)
            before = scrape(port)
            assert value(before, "llmqueue_jobs_succeeded_total") == 0
            provider.control("fail_next", count=2, status=429)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                handles = await producer.submit_many(
                    {"messages": [{"role": "user", "content": f"q{i}"}], "batch_id": "metrics"}
                    for i in range(10)
                )
                results = [r async for r in producer.as_completed(handles, timeout=60)]
            assert all(r.status == "succeeded" for r in results)
            after = scrape(port)
        log_lines = process.stderr.read().splitlines()  # type: ignore[union-attr]

    assert value(after, "llmqueue_jobs_succeeded_total", model=MODEL) == 10
    assert value(after, "llmqueue_jobs_started_total", model=MODEL) == 12
    assert value(after, "llmqueue_jobs_retried_total", model=MODEL, reason="rate_limit") == 2
    assert value(after, "llmqueue_rate_limited_total", model=MODEL) == 2
    assert value(after, "llmqueue_tokens_total", model=MODEL, kind="completion") > 0
    assert value(after, "llmqueue_limiter_wait_seconds_count", model=MODEL) > 0
    assert value(after, "llmqueue_call_duration_seconds_count", model=MODEL) == 12
    assert value(after, "llmqueue_in_flight", model=MODEL) == 0

    # --log-format json: one JSON object per line, one line per job event, and the key never printed.
    entries = [json.loads(line) for line in log_lines if line.strip()]
    job_lines = [e for e in entries if e["logger"] == "llmqueue.jobs"]
    succeeded = [e for e in job_lines if e["event"] == "succeeded"]
    assert len(succeeded) == 10
    assert {"job_id", "batch_id", "model", "attempt", "latency", "time", "level"} <= set(succeeded[0])
    assert succeeded[0]["batch_id"] == "metrics"
    retrying = [e for e in job_lines if e["event"] == "retrying"]
    assert len(retrying) == 2
    assert all(e["status_code"] == 429 for e in retrying)
    assert len([e for e in job_lines if e["event"] == "started"]) == 12
    assert TEST_API_KEY not in "\n".join(log_lines)


def test_metrics_port_in_use_is_a_clear_error(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_worker(
            {"REDIS_URL": redis_url, "WORKER_WARM_UP": "false"},
            args=["--metrics-port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"cannot serve metrics on port {port}" in stderr
    assert "Traceback" not in stderr


# ---- logs ----------------------------------------------------------------------------------------


def capture(formatter: logging.Formatter) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    return stream, handler


@contextmanager
def job_logger_to(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("llmqueue.jobs")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_log_is_one_object_per_event_with_the_key_redacted() -> None:
    secret = "sk-live-0123456789abcdef"
    stream, handler = capture(JsonFormatter([secret]))
    sink = JobLog([secret])
    with job_logger_to(handler):
        sink(event("retrying", reason="rate_limit", status_code=429, latency=0.25, wait=5.0))
        sink(
            event("failed", reason="auth", status_code=401, message=f"AuthenticationError: bad key {secret}")
        )

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "retrying"
    assert first["job_id"] == "job-1"
    assert first["batch_id"] == "batch-1"
    assert first["model"] == MODEL
    assert first["attempt"] == 1
    assert first["latency"] == 0.25
    assert first["status_code"] == 429
    assert first["level"] == "INFO"
    assert second["level"] == "WARNING"
    assert second["message"] == "AuthenticationError: bad key ***"
    assert secret not in stream.getvalue()


def test_text_log_is_one_line_per_event_with_secrets_redacted() -> None:
    secret = "not-key-shaped-secret"
    stream, handler = capture(RedactingFormatter(secrets=[secret]))
    with job_logger_to(handler):
        JobLog([secret])(event("failed", reason="auth", status_code=401, message=f"rejected {secret}"))
        logging.getLogger("llmqueue.jobs").warning("redis at redis://user:hunter2@host:6379 (%s)", secret)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "job job-1 failed" in lines[0]
    assert "status_code=401" in lines[0]
    assert secret not in stream.getvalue()
    assert "hunter2" not in stream.getvalue()


def test_secrets_of_settings_are_every_api_key_and_the_redis_password() -> None:
    settings = Settings(
        redis_url="redis://default:redis-pass-123@redis:6379/0",
        llm={"model": MODEL, "api_key": "sk-main-key-1234"},
        llm_groups={"other": {"api_key": "sk-group-key-5678"}},
    )
    assert set(secrets_of(settings)) == {"sk-main-key-1234", "sk-group-key-5678", "redis-pass-123"}


# ---- registry, health, workers -------------------------------------------------------------------


def registry_entry(
    redis_url: str, worker_id: str, *, last_seen: float, queue: str = "llmqueue:queue"
) -> None:
    with Redis.from_url(redis_url) as client:
        client.hset(
            keys.worker(worker_id),
            mapping={
                "worker_id": worker_id,
                "host": "elsewhere",
                "pid": 4242,
                "queue": queue,
                "in_flight": 3,
                "started_at": last_seen - 60,
                "last_seen": last_seen,
            },
        )
        client.expire(keys.worker(worker_id), 60)


def cli(redis_url: str, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--redis-url", redis_url])


def test_health_fails_with_no_worker_registered(redis_url: str) -> None:
    result = cli(redis_url, "health")
    assert result.exit_code == 1
    assert "no worker on queue llmqueue:queue has checked in within 15s" in result.output


def test_health_fails_when_the_last_heartbeat_is_older_than_max_age(redis_url: str) -> None:
    registry_entry(redis_url, "old:1:aaaaaa", last_seen=time.time() - 40)
    assert cli(redis_url, "health").exit_code == 1
    assert cli(redis_url, "health", "--max-age", "60").exit_code == 0


def test_health_counts_only_the_configured_queue_and_local_host(redis_url: str) -> None:
    registry_entry(redis_url, "w:1:aaaaaa", last_seen=time.time(), queue="other:queue")
    assert cli(redis_url, "health").exit_code == 1
    assert cli(redis_url, "health", "--queue", "other:queue").exit_code == 0
    assert cli(redis_url, "health", "--queue", "other:queue", "--local").exit_code == 1


def test_health_with_unreachable_redis_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmqueue", "health", "--redis-url", "redis://:pw-secret@127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot reach Redis" in done.stderr
    assert "pw-secret" not in done.stderr
    assert "Traceback" not in done.stderr


def test_workers_lists_registry_entries_as_json_and_table(redis_url: str) -> None:
    now = time.time()
    registry_entry(redis_url, "box:4242:abcdef", last_seen=now - 2)
    result = cli(redis_url, "workers", "--json")
    assert result.exit_code == 0
    (entry,) = json.loads(result.stdout)
    assert entry["worker_id"] == "box:4242:abcdef"
    assert entry["in_flight"] == 3
    assert entry["host"] == "elsewhere"
    assert 1 < entry["age"] < 30

    table = cli(redis_url, "workers")
    assert table.exit_code == 0
    assert "box:4242:abcdef" in table.stdout
    assert "1 worker(s), 3 job(s) in flight" in table.output


def slow_settings(redis_url: str, provider: RunningProvider) -> Settings:
    return make_settings(
        redis_url,
        provider.base_url,
        worker={"heartbeat_interval": 0.1, "in_progress_ttl": 2, "health_check_interval": 0.2},
    )


async def test_live_worker_is_listed_with_its_in_flight_jobs_and_passes_health(redis_url: str) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, latency=1.5)) as provider:
        settings = slow_settings(redis_url, provider)
        # A configured limit: a scope with none sends two calls, then waits for the provider's headers.
        settings.llm = settings.llm.model_copy(update={"rpm": 6000.0})
        async with Producer(settings) as producer:
            async with running_worker(settings):
                handles = await producer.submit_many(
                    {"messages": [{"role": "user", "content": f"slow {i}"}]} for i in range(3)
                )
                await asyncio.sleep(0.8)  # the calls are running; a few heartbeats have passed
                workers = await read_workers(producer.redis)
                assert len(workers) == 1
                (info,) = workers
                assert info.in_flight == 3
                assert info.host == socket.gethostname()
                assert info.queue == settings.worker.queue_name
                assert live_workers(workers, max_age=1.0, host=socket.gethostname()) == [info]

                health = await asyncio.to_thread(cli, redis_url, "health", "--local")
                assert health.exit_code == 0, health.output
                assert "ok: 1 live worker(s)" in health.stdout
                assert "jobs: 3 running" in health.stdout
                assert "0 retried after a failed call" in health.stdout

                results = [r async for r in producer.as_completed(handles, timeout=30)]
                assert all(r.status == "succeeded" for r in results)
            # A worker that stopped cleanly removes its entry, so it is no longer listed.
            assert await read_workers(producer.redis) == []


async def test_arq_health_check_key_is_rewritten_while_the_worker_runs(redis_url: str) -> None:
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        settings = slow_settings(redis_url, provider)
        async with running_worker(settings), Producer(settings) as producer:
            await asyncio.sleep(0.3)
            first = await arq_health(producer.redis, settings.worker.queue_name)
            ttl = await producer.redis.pttl(settings.worker.queue_name + ":health-check")
            await asyncio.sleep(1.2)
            second = await arq_health(producer.redis, settings.worker.queue_name)
    assert first is not None and second is not None
    assert 0 < ttl <= 1200  # health_check_interval + 1 s
    assert first != second  # the line starts with a timestamp: it was written again


def test_malformed_registry_entry_is_skipped(redis_url: str) -> None:
    with Redis.from_url(redis_url) as client:
        client.hset(keys.worker("broken"), mapping={"worker_id": "broken", "pid": "not a number"})
    registry_entry(redis_url, "good:1:aaaaaa", last_seen=time.time())

    async def read() -> list[WorkerInfo]:
        from redis.asyncio import Redis as AsyncRedis

        client = AsyncRedis.from_url(redis_url)
        try:
            return await read_workers(client)
        finally:
            await client.aclose()

    assert [w.worker_id for w in asyncio.run(read())] == ["good:1:aaaaaa"]


def test_registry_entry_carries_the_worker_version_when_its_heartbeat_records_it() -> None:
    entry = {
        b"worker_id": b"h:1:a",
        b"host": b"h",
        b"pid": b"1",
        b"queue": b"q",
        b"in_flight": b"0",
        b"started_at": b"1.0",
        b"last_seen": b"2.0",
    }
    assert WorkerInfo.from_hash(entry).version is None
    assert WorkerInfo.from_hash({**entry, b"version": b"0.1.0"}).to_json(3.0)["version"] == "0.1.0"
