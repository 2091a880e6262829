"""``python -m tests.support.arq_version_check VERSION REDIS_URL BASE_URL``: jobs end to end on one arq.

Run with that arq version first on ``sys.path`` (``tests/test_arq_versions.py`` installs it aside).
Queues jobs with arq's own ``enqueue_job`` and with the producer, runs them with llmqueue's worker
loop (burst) and then with arq's own worker (``arq llmqueue.worker.WorkerSettings``' settings), and
prints one JSON line: the arq version imported and each job's status and attempts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import arq
from arq.connections import create_pool
from arq.worker import Worker as ArqWorker

from llmqueue.producer import Producer
from llmqueue.queue import payload
from llmqueue.worker import arq_worker_settings, create_worker, redis_settings
from tests.support.settings import make_settings


def chat(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "messages": [{"role": "user", "content": job_id}]}


async def check(redis_url: str, base_url: str) -> dict[str, Any]:
    settings = make_settings(redis_url, base_url)
    queue = settings.worker.queue_name
    pool = await create_pool(redis_settings(settings), job_serializer=payload.serialize)
    outcome: dict[str, Any] = {"arq": arq.VERSION}
    try:
        async with Producer(settings) as producer:
            for round_, run in (("loop", run_loop), ("arq_worker", run_arq_worker)):
                ids = [f"{round_}-by-arq", f"{round_}-by-producer"]
                await pool.enqueue_job(payload.JOB_FUNCTION, chat(ids[0]), _job_id=ids[0], _queue_name=queue)
                await producer.submit(chat(ids[1]))
                await run(settings)
                for job_id in ids:
                    result = await producer.handle(job_id).result(timeout=5)
                    outcome[job_id] = [result.status, result.attempts]
    finally:
        await pool.close(close_connection_pool=True)
    return outcome


async def run_loop(settings: Any) -> None:
    await create_worker(settings, burst=True, handle_signals=False).main()


async def run_arq_worker(settings: Any) -> None:
    worker = ArqWorker(**arq_worker_settings(settings), burst=True, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(check(sys.argv[2], sys.argv[3])) | {"expected": sys.argv[1]}))
