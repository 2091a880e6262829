"""The run lock in a shared Redis: a holder that was killed on this machine is taken over at once; any
holder that may still run keeps the lock until it expires."""

from __future__ import annotations

import subprocess
import sys

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.run_lock import TTL_SECONDS, RedisRunLock, process_space
from llmqueue.errors import BatchBusyError

BATCH = "locked"


def _ended_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def _held_by(redis: Redis, token: str) -> None:
    await redis.set(keys.batch_run_lock(BATCH), token, ex=TTL_SECONDS)


async def test_a_lock_whose_holder_was_killed_here_is_taken_over_at_once(redis: Redis) -> None:
    await _held_by(redis, f"host:{_ended_pid()}:1:{process_space()}")
    lock = RedisRunLock(redis, BATCH)
    await lock.acquire()
    assert await redis.get(keys.batch_run_lock(BATCH)) == lock.token.encode()
    assert 0 < await redis.ttl(keys.batch_run_lock(BATCH)) <= TTL_SECONDS
    with pytest.raises(BatchBusyError):  # and the new holder, alive, is not taken over in turn
        await RedisRunLock(redis, BATCH).acquire()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("host:{alive}:1:{space}", id="a holder that still runs"),
        pytest.param("host:{ended}:1:0123456789abcdef", id="another machine or container"),
        pytest.param("host:{ended}:1", id="a lock taken by an older version"),
        pytest.param("host:{ended}:1:", id="a machine whose processes cannot be told apart"),
    ],
)
async def test_a_lock_whose_holder_may_still_run_is_refused_with_its_name(redis: Redis, token: str) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            held = token.format(alive=alive.pid, ended=_ended_pid(), space=process_space())
            await _held_by(redis, held)
            with pytest.raises(BatchBusyError, match=r"being run by another `llmqueue run` \(host:\d+\)"):
                await RedisRunLock(redis, BATCH).acquire()
            assert await redis.get(keys.batch_run_lock(BATCH)) == held.encode()
        finally:
            alive.kill()


def test_the_process_space_is_this_machine_boot_and_pid_namespace() -> None:
    assert len(process_space()) == 16
    assert process_space() == process_space()
