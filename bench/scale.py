"""Benchmark 5, scale: how fast jobs can be queued and what a queued job costs in Redis memory, then a
large batch through 4 workers with a provider that answers at once, checking that every job ends with
exactly one result (stored once, announced once, and sent to the provider once); then a big file
through ``llmqueue run`` (:mod:`bench.big_file`): time to its first request, its RSS, Redis per line.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench.big_file import big_file_rows, run_big_file
from bench.harness import BenchError, Workers, flush, producer_settings, run_batch, warm_up, worker_env
from bench.workloads import chat_job, jobs
from llmqueue.models import Job
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

ENQUEUE_TARGET = 25_000  # jobs/s
WORKERS = 4
FULL = {"enqueue": 100_000, "batch": 20_000, "file_lines": 200_000}
QUICK = {"enqueue": 10_000, "batch": 1_000, "file_lines": 20_000}
FILE_OBSERVED = 40.0  # seconds of a big file's run watched (issue 29's figure for 200,000 lines)
FIRST_REQUEST_TARGET = 5.0  # seconds

COLUMNS = {"figure": "figure", "value": "value", "unit": "unit", "target": "target", "met": "met"}


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="llmqueue-bench-") as scratch, EmbeddedRedis() as redis:
        enqueue = asyncio.run(_enqueue(redis.url, sizes["enqueue"]))
        flush(redis.url)
        with (
            ProviderProcess(ProviderConfig()) as provider,
            Workers(worker_env(redis.url, provider.base_url), Path(scratch)) as workers,
        ):
            workers.scale_to(WORKERS)
            batch = asyncio.run(_batch(redis.url, provider, workers, sizes["batch"]))
    big = run_big_file(sizes["file_lines"], FILE_OBSERVED)
    unchecked = run_big_file(sizes["file_lines"], FILE_OBSERVED, skip_invalid=True)
    rows = [
        {
            "figure": f"enqueue {sizes['enqueue']:,} jobs (submit_many, one call)",
            "value": enqueue["jobs_per_second"],
            "unit": "jobs/s",
            "target": f"≥ {ENQUEUE_TARGET:,}/s",
            "met": enqueue["jobs_per_second"] >= ENQUEUE_TARGET,
        },
        {
            "figure": "  of which validating the jobs (Job.parse alone)",
            "value": enqueue["validate_seconds"] / enqueue["seconds"],
            "unit": "share of the time",
        },
        {"figure": "Redis memory per queued job", "value": enqueue["bytes_per_job"], "unit": "bytes"},
        {
            "figure": f"{sizes['batch']:,} jobs through {WORKERS} workers, 0 ms provider",
            "value": batch["jobs_per_second"],
            "unit": "jobs/s",
        },
        {
            "figure": "  every job has exactly one result",
            "value": "yes" if batch["exactly_one_result"] else "NO",
            "unit": "",
            "target": "yes",
            "met": batch["exactly_one_result"],
        },
        *big_file_rows(big, "run", first_request_target=FIRST_REQUEST_TARGET, observed=FILE_OBSERVED),
        *big_file_rows(
            unchecked, "run --skip-invalid", first_request_target=FIRST_REQUEST_TARGET, observed=FILE_OBSERVED
        ),
    ]
    return {
        "title": "5. Scale",
        "description": "a private Redis; enqueueing with no workers running, then a batch through 4 workers",
        "params": sizes,
        "columns": COLUMNS,
        "rows": rows,
        "enqueue": enqueue,
        "batch": batch,
        "big_file": big,
        "big_file_skip_invalid": unchecked,
        "notes": [
            f"big file: `llmqueue run` of {big['lines']:,} lines of ~1 KB prompts "
            f"({big['file_bytes'] / 2**20:.0f} MB), 2 workers, a 10 ms provider with no limit, a private "
            f"Redis; watched until {FILE_OBSERVED:.0f} s after its first request. Time to the first "
            "request includes the up-front check of every line (a bad line stops the run before "
            "anything is queued), made while the first worker starts (its LiteLLM import); peak "
            "RSS is the run process's VmHWM; Redis memory is INFO used_memory over its empty state",
            "memory per job = INFO used_memory after enqueueing minus before, divided by the job count "
            "(arq's job key with the JSON payload, plus the queue's sorted-set entry)",
            "exactly one result: a result for every job, one completion notice per job in the producer's "
            "inbox and none twice, one provider call per job, nothing left in the queue",
        ],
    }


async def _enqueue(redis_url: str, count: int) -> dict[str, Any]:
    batch_jobs = jobs("chat", count)
    started = time.perf_counter()
    for job in batch_jobs:
        Job.parse(job)
    validate_seconds = time.perf_counter() - started
    with redis_sync.Redis.from_url(redis_url) as client:
        before = int(client.info("memory")["used_memory"])  # type: ignore[index]
        async with Producer(producer_settings(redis_url)) as producer:
            started = time.perf_counter()
            handles = await producer.submit_many(batch_jobs)
            seconds = time.perf_counter() - started
            queued = await producer.redis.zcard(producer.settings.worker.queue_name)
        after = int(client.info("memory")["used_memory"])  # type: ignore[index]
    if len(handles) != count or queued != count:
        raise BenchError(f"submitted {count} jobs, {queued} are queued")
    return {
        "jobs": count,
        "seconds": seconds,
        "jobs_per_second": count / seconds,
        "validate_seconds": validate_seconds,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_job": (after - before) / count,
    }


async def _batch(redis_url: str, provider: ProviderProcess, workers: Workers, count: int) -> dict[str, Any]:
    async with Producer(producer_settings(redis_url)) as producer:
        await warm_up(producer, workers, chat_job(0))
    flush(redis_url)
    provider.control("reset")
    async with Producer(producer_settings(redis_url)) as producer:
        batch = await run_batch(producer, jobs("chat", count), timeout=600, workers=workers)
        queued = await producer.redis.zcard(producer.settings.worker.queue_name)
    stats = provider.stats()
    ids = [result.job_id for result in batch.results if result is not None]
    notices = [job_id.decode() for job_id in batch.inbox]
    checks = {
        "results": len(ids),
        "results_succeeded": batch.succeeded,
        "distinct_results": len(set(ids)),
        "inbox_notices": len(notices),
        "distinct_inbox_notices": len(set(notices)),
        "provider_calls": int(stats["requests"]),
        "left_in_queue": int(queued),
    }
    exact = (
        checks["results"] == checks["results_succeeded"] == checks["distinct_results"] == count
        and checks["inbox_notices"] == checks["distinct_inbox_notices"] == count
        and checks["provider_calls"] == count
        and checks["left_in_queue"] == 0
    )
    return {
        "jobs": count,
        "seconds": batch.seconds,
        "jobs_per_second": count / batch.seconds,
        "exactly_one_result": exact,
        **checks,
    }
