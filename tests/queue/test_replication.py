"""Writes that matter wait for a replica (Redis WAIT): a real master and its replica, the replica frozen
(SIGSTOP) where a test needs it not to answer. Three sentinels run too (the set the failover tests use);
nothing here fails the master over."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.models import Job, JobResult
from llmqueue.producer import Producer
from llmqueue.queue.replication import ReplicaWait
from llmqueue.queue.store import JobStore
from llmqueue.settings import Settings
from tests.support.sentinel import HOST, SentinelSet, sentinel_set
from tests.support.settings import make_settings


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    with sentinel_set(tmp_path_factory.mktemp("replication")) as started:
        yield started


@pytest.fixture
async def master(servers: SentinelSet) -> AsyncIterator[Redis]:
    client = Redis(host=HOST, port=servers.master_port)
    yield client
    await client.aclose()


@contextmanager
def replica_frozen(servers: SentinelSet) -> Iterator[None]:
    """The replica stopped (it takes no replication stream and acknowledges nothing), then resumed."""
    pid = servers.processes["replica"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _wait_commands(master: Redis) -> int:
    stats = await master.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def test_a_write_is_acknowledged_only_once_the_replica_holds_it(
    servers: SentinelSet, master: Redis
) -> None:
    waits = ReplicaWait(master, replicas=1, timeout=30)
    with replica_frozen(servers):
        write = asyncio.ensure_future(waits.confirmed(lambda: master.set("acknowledged", "yes")))
        await asyncio.sleep(0.3)
        held_back = not write.done()
    assert await asyncio.wait_for(write, 30) is True
    assert held_back
    assert servers.node(servers.replica_port).get("acknowledged") == b"yes"


async def test_a_write_no_replica_confirms_in_time_is_written_again_and_acknowledged_with_a_warning(
    servers: SentinelSet, master: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    waits = ReplicaWait(master, replicas=1, timeout=0.2)
    calls = 0

    async def write() -> int:
        nonlocal calls
        calls += 1
        return int(await master.incr("written"))

    with caplog.at_level(logging.INFO, "llmqueue.replication"):
        with replica_frozen(servers):
            first = await waits.confirmed(write)
            second = await waits.confirmed(write)
        waits.timeout = 30
        again = await waits.confirmed(write)
    # Each unconfirmed write is made twice, its first answer returned; a confirmed one once.
    assert (first, second, again, calls) == (1, 3, 5, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "0 of 1 replica(s) acknowledged a write within 0.2s" in warnings[0]
    assert any("acknowledge writes again" in r.getMessage() for r in caplog.records)


async def test_writes_waiting_together_share_wait_rounds(master: Redis) -> None:
    waits = ReplicaWait(master, replicas=1, timeout=5)
    before = await _wait_commands(master)
    answers = await asyncio.gather(*(waits.confirmed(lambda: master.incr("together")) for _ in range(40)))
    rounds = await _wait_commands(master) - before
    assert sorted(answers) == list(range(1, 41))
    assert 1 <= rounds < 40


async def test_while_fewer_replicas_are_connected_than_wanted_writes_wait_no_more(master: Redis) -> None:
    waits = ReplicaWait(master, replicas=2, timeout=0.2)  # one replica runs: the first WAIT falls short
    await waits.confirmed(lambda: master.incr("short"))
    before = await _wait_commands(master)
    for _ in range(5):
        await waits.confirmed(lambda: master.incr("short"))
    assert await _wait_commands(master) == before
    assert await master.get("short") == b"12"  # each write made twice


async def test_a_connection_lost_during_a_write_makes_the_write_and_its_wait_go_again(master: Redis) -> None:
    waits = ReplicaWait(master, replicas=1, timeout=5)
    calls = 0

    async def write() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("the master went away")
        return "stored"

    assert await waits.confirmed(write) == "stored"
    assert calls == 2


async def test_connection_errors_beyond_the_patience_are_raised(master: Redis) -> None:
    waits = ReplicaWait(master, replicas=1, timeout=5, patience=0.2)

    async def write() -> None:
        raise RedisConnectionError("no master")

    with pytest.raises(RedisConnectionError, match="no master"):
        await waits.confirmed(write)


def test_writes_wait_for_a_replica_by_default_through_sentinels_only() -> None:
    through_sentinels = "redis+sentinel://127.0.0.1:1/svc"
    assert Settings(redis_url=through_sentinels).wait_replicas() == 1  # type: ignore[arg-type]
    assert Settings(redis_url="redis://localhost/0").wait_replicas() == 0  # type: ignore[arg-type]
    assert Settings(redis_url=through_sentinels, redis_wait_replicas=0).wait_replicas() == 0  # type: ignore[arg-type]
    assert Settings(redis_wait_replicas=2).wait_replicas() == 2
    assert Producer(Settings(), redis_url=through_sentinels).store.replicas is not None
    assert Producer(Settings()).store.replicas is None


async def test_a_stored_result_and_its_batch_counts_are_acknowledged_once_the_replica_holds_them(
    servers: SentinelSet, master: Redis
) -> None:
    store = JobStore(
        master,
        queue_name="q",
        job_ttl=60,
        result_ttl=60,
        replicas=ReplicaWait(master, replicas=1, timeout=30),
    )
    job = Job.parse({"id": "stored-1", "batch_id": "counted", "messages": [{"role": "user", "content": "x"}]})
    (added,) = await Batches(store).enqueue_jobs("counted", [job])
    with replica_frozen(servers):
        finish = asyncio.ensure_future(store.finish(JobResult.from_cache(job, "m", {"choices": []})))
        await asyncio.sleep(0.3)
        held_back = not finish.done()
    assert added and await asyncio.wait_for(finish, 30) is True
    assert held_back
    replica = servers.node(servers.replica_port)
    assert replica.exists(keys.result("stored-1"))
    assert replica.hmget(keys.batch("counted"), ["total", "succeeded"]) == [b"1", b"1"]


def test_the_wait_is_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://127.0.0.1:1/svc")
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", "0")
    monkeypatch.setenv("REDIS_WAIT_TIMEOUT", "0.25")
    settings = Settings()
    assert (settings.wait_replicas(), settings.redis_wait_timeout) == (0, 0.25)


async def test_a_producer_through_the_sentinels_submits_and_the_replica_holds_the_jobs(
    servers: SentinelSet,
) -> None:
    jobs = [{"messages": [{"role": "user", "content": f"p{n}"}], "batch_id": "replicated"} for n in range(5)]
    async with Producer(make_settings(servers.url, "http://127.0.0.1:9")) as producer:
        assert producer.store.replicas is not None
        with replica_frozen(servers):
            submission = asyncio.ensure_future(producer.submit_many(jobs))
            await asyncio.sleep(0.3)
            held_back = not submission.done()
        handles = await asyncio.wait_for(submission, 30)
    assert held_back
    replica = servers.node(servers.replica_port)
    assert all(replica.exists(keys.arq_job(handle.job_id)) for handle in handles)
    assert replica.hget(keys.batch("replicated"), "total") == b"5"
