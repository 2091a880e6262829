"""Script calls of one event-loop turn share a pipeline; each caller still gets its own reply or error."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from llmqueue.coalesce import ScriptCoalescer

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON_ZERO = "if ARGV[1] == '0' then return redis.error_reply('zero refused') end return ARGV[1]"


async def test_calls_made_together_share_one_round_trip_and_get_their_own_replies(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    replies = await asyncio.gather(*(incr(keys=["counter"], args=[n]) for n in range(1, 51)))
    assert max(replies) == sum(range(1, 51)) and len(set(replies)) == 50
    assert replies[1:] == sorted(replies[1:])  # one pipeline: in the order the calls were made
    # The first goes at once (nothing was on its way); the 49 made while it was go together.
    assert (coalescer.round_trips, coalescer.calls) == (2, 50)
    assert int(await redis.get("counter")) == sum(range(1, 51))


async def test_calls_made_apart_each_go_at_once(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    assert await incr(keys=["counter"], args=[2]) == 2
    assert await incr(keys=["counter"], args=[3]) == 5
    assert coalescer.round_trips == 2


async def test_one_failing_call_fails_only_its_caller(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    echo = coalescer.register_script(FAIL_ON_ZERO)
    replies = await asyncio.gather(*(echo(args=[n]) for n in (1, 1, 0, 2)), return_exceptions=True)
    assert replies[:2] == [b"1", b"1"] and replies[3] == b"2"
    assert isinstance(replies[2], ResponseError) and "zero refused" in str(replies[2])
    assert coalescer.round_trips == 2


async def test_scripts_flushed_from_redis_are_loaded_again(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    await incr(keys=["counter"], args=[1])
    await redis.script_flush()
    replies = await asyncio.gather(*(incr(keys=["counter"], args=[1]) for _ in range(5)))
    assert sorted(replies) == [2, 3, 4, 5, 6]


async def test_a_lost_connection_reaches_every_caller_of_the_pipeline() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens on port 1
    coalescer = ScriptCoalescer(dead)
    incr = coalescer.register_script(INCR_BY)
    replies = await asyncio.gather(*(incr(keys=["k"], args=[1]) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(reply, RedisConnectionError) for reply in replies), replies
    assert len({id(reply) for reply in replies}) == 4  # each its own: tracebacks of jobs do not mix
    await dead.aclose()


async def test_a_call_whose_arguments_cannot_be_sent_fails_alone(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    args: list[list[object]] = [[1], [1], [None], [1]]  # redis-py refuses None before sending anything
    replies = await asyncio.gather(*(incr(keys=["counter"], args=a) for a in args), return_exceptions=True)
    assert isinstance(replies[2], DataError)
    assert sorted(r for r in replies if isinstance(r, int)) == [1, 2, 3]


@pytest.mark.parametrize("together", [2, 4])
async def test_a_cancelled_caller_leaves_the_others_their_replies(redis: Redis, together: int) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    calls = [asyncio.ensure_future(incr(keys=["counter"], args=[1])) for _ in range(together + 1)]
    await asyncio.sleep(0)
    calls[0].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, int) for r in results[1:])
