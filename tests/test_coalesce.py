"""Script calls of one event-loop turn share a pipeline; each caller still gets its own reply or error."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from llmqueue.coalesce import ScriptCoalescer

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
SLOW_ECHO = "for i = 1, tonumber(ARGV[2]) do local _ = i * 2 end return ARGV[1]"
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


async def test_lone_calls_after_the_first_go_on_a_kept_connection(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    assert await incr(keys=["counter"], args=[1]) == 1  # through the pool; then a connection is kept
    kept = coalescer._own
    assert kept is not None
    assert [await incr(keys=["counter"], args=[1]) for _ in range(3)] == [2, 3, 4]
    assert coalescer._own is kept
    await redis.script_flush()
    assert await incr(keys=["counter"], args=[1]) == 5  # loaded again
    await coalescer.close()


async def test_a_lone_call_cancelled_mid_reply_leaves_no_reply_for_the_next_one(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    slow = coalescer.register_script(SLOW_ECHO)
    assert await slow(args=["warm", 1]) == b"warm"
    waiting = asyncio.ensure_future(slow(args=["first", 5_000_000]))
    await asyncio.sleep(0.005)  # written, and Redis busy with it for tens of ms
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await slow(args=["second", 1]) == b"second"
    await coalescer.close()


async def test_a_lost_kept_connection_is_replaced_without_failing_the_call(redis: Redis) -> None:
    coalescer = ScriptCoalescer(redis)
    incr = coalescer.register_script(INCR_BY)
    await incr(keys=["counter"], args=[1])
    assert coalescer._own is not None
    await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert await incr(keys=["counter"], args=[1]) == 2
    assert await incr(keys=["counter"], args=[1]) == 3
    await coalescer.close()
