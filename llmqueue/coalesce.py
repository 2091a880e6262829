"""Script calls made in one turn of the event loop reach Redis together, in one pipeline.

A worker running hundreds of jobs calls the limiter's and the result store's scripts for each of them.
Every call on its own costs a send, a wake-up and a read, which on a busy machine is more than the
script itself. Calls made while the event loop is in one turn (jobs claimed together start together,
answers arrive together) are sent as one pipeline instead; each caller still gets its own reply or
its own error. A call made while nothing else is on its way goes at once, as it would have without
this: an idle worker's one job (an agent step) never waits a turn of the loop for company, which would
put it behind whatever else the loop runs in that turn (LiteLLM's logging of the answer, say). Such a
call goes on a connection kept for them, so it is written before the caller yields (the pool checks a
connection it hands out with a read, which gives the loop away first).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError, ResponseError


@dataclass
class _Call:
    script: AsyncScript
    keys: Sequence[Any]
    args: Sequence[Any]
    reply: asyncio.Future[Any]


class ScriptCoalescer:
    """Registers scripts whose calls share pipelines (``register_script``, as ``Redis.register_script``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiting: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._alone = False
        """A call sent at once, on its own, has not had its reply yet (there is never more than one)."""
        self._own: Connection | None = None
        """The connection lone calls are written to at once (taken from the pool on first use)."""
        self.round_trips = 0
        """Pipelines and lone calls sent so far (the tests read it)."""
        self.calls = 0

    def register_script(self, source: str) -> CoalescedScript:
        return CoalescedScript(self, self.redis.register_script(source))

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if not self._waiting and not self._sending and not self._alone:
            self.round_trips += 1
            self.calls += 1
            self._alone = True
            try:
                return await self._call_alone(script, keys, args)
            finally:
                self._alone = False
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._send_waiting)
        call = _Call(script, keys, args, loop.create_future())
        self._waiting.append(call)
        return await call.reply

    async def _call_alone(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        own = self._own
        if own is None:
            reply = await script(keys=keys, args=args)  # the pool's way, with its retries; loads the script
            self._own = await self.redis.connection_pool.get_connection("EVALSHA")
            return reply
        try:
            await own.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return await own.read_response()
        except NoScriptError:  # Redis restarted or its scripts were flushed: the pool's way loads it
            return await script(keys=keys, args=args)
        except ResponseError:  # the script's own error: its reply was read, the connection is fine
            raise
        except BaseException as exc:
            # A reply left unread would be read as the next call's, so the connection goes back to the
            # pool, closed; a lost connection is retried the pool's way (its backoff rides out an outage).
            self._give_back(own)
            if isinstance(exc, Exception) and not isinstance(exc, DataError):
                return await script(keys=keys, args=args)
            raise

    def _give_back(self, connection: Connection) -> None:
        if self._own is connection:
            self._own = None

        async def close_and_release() -> None:
            await connection.disconnect(nowait=True)
            await self.redis.connection_pool.release(connection)

        task = asyncio.ensure_future(close_and_release())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Give the kept connection back to the pool (the worker's shutdown)."""
        if self._own is not None:
            own, self._own = self._own, None
            await self.redis.connection_pool.release(own)

    def _send_waiting(self) -> None:
        calls, self._waiting = self._waiting, []
        self.round_trips += 1
        self.calls += len(calls)
        task = asyncio.ensure_future(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            if len(calls) == 1:
                await _send_alone(calls[0])
                return
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for call in calls:
                        pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                    replies = await pipe.execute(raise_on_error=False)
            except DataError:  # one call's arguments could not be encoded, so nothing was sent
                for call in calls:
                    await _send_alone(call)  # each on its own: only that call fails
                return
            except Exception as exc:  # a lost connection: every caller still waiting hears it
                for call in calls:
                    _settle(call, _own_copy(exc))
                return
            for call, reply in zip(calls, replies, strict=True):
                if isinstance(reply, NoScriptError):  # Redis restarted or its scripts were flushed
                    await _send_alone(call)
                else:
                    _settle(call, reply)
        except asyncio.CancelledError:
            for call in calls:
                call.reply.cancel()
            raise


class CoalescedScript:
    """A script whose calls go out with the other calls of the same event-loop turn."""

    def __init__(self, coalescer: ScriptCoalescer, script: AsyncScript) -> None:
        self._coalescer = coalescer
        self.script = script

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self._coalescer.call(self.script, keys, args)


async def _send_alone(call: _Call) -> None:
    try:
        reply = await call.script(keys=call.keys, args=call.args)
    except Exception as exc:
        reply = exc
    _settle(call, reply)


def _own_copy(exc: Exception) -> Exception:
    """A caller's own instance of a shared error, so tracebacks of different jobs do not pile up on it."""
    copied = copy.copy(exc)
    copied.__cause__ = exc
    return copied


def _settle(call: _Call, reply: Any) -> None:
    if call.reply.done():  # its caller was cancelled meanwhile
        return
    if isinstance(reply, BaseException):
        call.reply.set_exception(reply)
    else:
        call.reply.set_result(reply)
