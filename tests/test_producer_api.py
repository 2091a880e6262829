"""The Python API as an application uses it: waits by id, cancelling from code, batches made from code,
and waits whose job Redis lost. Real redis-servers (private ones where connections are counted or
Redis is restarted), the simulated provider, workers in process or as ``llmqueue`` processes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmqueue.errors import JobNotFoundError, ResultTimeoutError
from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import MAX_CONNECTIONS, Producer
from llmqueue.simulator.server import RunningProvider
from tests.support.reliability import child_env
from tests.support.settings import make_settings, running_worker

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server without persistence: its clients are this test's only."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
async def unretrieved() -> AsyncIterator[list[dict[str, Any]]]:
    """What the loop's exception handler was given ("Task exception was never retrieved" and the like)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


def chats(count: int, prefix: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{n}", "messages": [{"role": "user", "content": f"{prefix} {n}"}], **fields}
        for n in range(count)
    ]


async def clients(redis: Redis) -> int:
    """Connections the server has now, the asking one left out."""
    listed = await redis.execute_command("CLIENT", "LIST")
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    return len(text.strip().splitlines()) - 1


@pytest.mark.slow
async def test_2000_waits_by_id_share_at_most_10_redis_connections(
    own_redis: EmbeddedRedis, provider: RunningProvider
) -> None:
    settings = make_settings(own_redis.url, provider.base_url, worker={"max_jobs": 200})
    async with Producer(settings) as submitter:
        handles = await submitter.submit_many(chats(2000, "later"))
    ids = [handle.job_id for handle in handles]
    observer = Redis.from_url(own_redis.url)
    peak = 0
    async with Producer(settings) as producer:  # "come back later": waits by id, from another producer
        waits = [asyncio.ensure_future(producer.handle(job_id).result(timeout=120)) for job_id in ids]
        for _ in range(35):  # through the no-worker notice (3 s) and a check that the jobs exist (5 s)
            await asyncio.sleep(0.2)
            peak = max(peak, await clients(observer))
        assert not any(wait.done() for wait in waits)
        async with running_worker(settings):
            results = await asyncio.gather(*waits)
    await observer.aclose()
    print(f"\n2,000 waits by id: at most {peak} Redis connections")
    assert peak <= 10 and MAX_CONNECTIONS <= 10
    assert sorted(result.job_id for result in results) == sorted(ids)
    assert {result.status for result in results} == {"succeeded"}


@pytest.mark.slow
async def test_cancel_stops_10000_queued_jobs_before_any_is_paid_for(
    own_redis: EmbeddedRedis, provider: RunningProvider
) -> None:
    settings = make_settings(own_redis.url, provider.base_url)
    async with Producer(settings) as producer:
        handles = await producer.submit_many(chats(10_000, "big"))
        with pytest.raises(ResultTimeoutError):
            async for _ in producer.as_completed(handles, timeout=1):
                pass
        assert await handles[0].cancel() is True
        cancelled = await producer.cancel(handle.job_id for handle in handles)
        assert len(cancelled) == 9_999 and handles[0].job_id not in cancelled
        assert await producer.cancel([handles[1].job_id]) == []  # ended already: nothing to cancel
        ended = [result async for result in producer.as_completed(handles, timeout=60)]
        async with running_worker(settings):
            await asyncio.sleep(2)  # a worker finds nothing to do
    assert len(ended) == 10_000
    assert {result.status for result in ended} == {"cancelled"}
    assert all(result.errors[-1].kind == "cancelled" for result in ended)
    assert provider.stats.requests == 0


@pytest.mark.slow
async def test_jobs_submitted_with_a_batch_id_make_a_batch_the_cli_knows(
    own_redis: EmbeddedRedis, provider: RunningProvider, tmp_path: Path
) -> None:
    settings = make_settings(own_redis.url, provider.base_url)
    env = child_env(REDIS_URL=own_redis.url)

    def llmqueue(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmqueue", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    async with Producer(settings) as producer:
        first = await producer.submit_many(chats(3, "api", batch_id="apibatch"))
        await producer.submit_many(chats(5, "api", batch_id="apibatch")[3:])
        status = llmqueue("status", "apibatch", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert '"total": 5' in status.stdout
        cancel = llmqueue("cancel", "apibatch")
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert "5 job(s) cancelled" in " ".join((cancel.stdout + cancel.stderr).split())
        assert (await first[0].result(timeout=10)).status == "cancelled"
    output = tmp_path / "out.jsonl"
    results = llmqueue("results", "apibatch", "--output", str(output))
    assert results.returncode == 0, results.stdout + results.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"batch_req_api-{n}" for n in range(5)]  # submission order
    assert {line["llmqueue"]["status"] for line in lines} == {"cancelled"}


@pytest.mark.slow
async def test_a_wait_whose_job_redis_lost_ends_alone_and_says_redis_lost_its_data(
    provider: RunningProvider, unretrieved: list[dict[str, Any]]
) -> None:
    with EmbeddedRedis(appendonly=False) as server:
        settings = make_settings(server.url, provider.base_url)
        async with Producer(settings) as producer:
            handles = await producer.submit_many(chats(40, "kept"))
            collected: list[str] = []
            failure: list[BaseException] = []

            async def consume() -> None:
                try:
                    async for result in producer.as_completed(handles, timeout=120):
                        collected.append(result.job_id)
                except JobNotFoundError as exc:
                    failure.append(exc)

            consuming = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)
            server.kill()  # Redis restarts without persistence: every job is gone
            server.start()
            async with Producer(settings) as again:  # the application queues half of them again
                await again.submit_many(chats(20, "kept"))
                async with running_worker(settings):
                    await asyncio.wait_for(consuming, 60)
    gc.collect()
    await asyncio.sleep(0)
    assert sorted(collected) == sorted(f"kept-{n}" for n in range(20))
    (error,) = failure
    assert isinstance(error, JobNotFoundError)
    assert sorted(error.job_ids) == sorted(f"kept-{n}" for n in range(20, 40))
    assert "Redis lost its data" in str(error) and "restarted" in str(error)
    assert not [context for context in unretrieved if "never retrieved" in str(context.get("message"))]
