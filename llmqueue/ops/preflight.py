"""Checks a process makes before it starts: errors that waiting cannot heal are said at once, in one line.

A worker's start-up waits for Redis through ``redis_connect_retries`` attempts, right for a Redis that is
starting, wrong for one that refuses the password or has no such database: those are refused here.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue.connection import redis_client
from llmqueue.queue.heartbeat import clear_starting, mark_starting, starting_mark
from llmqueue.redaction import redact_url, redis_error_line


async def redis_refusal(url: str, *, timeout: float = 5.0, starting_on: str | None = None) -> str | None:
    """Why Redis at ``url`` will not serve this process however long it waits, or None (it answered, or
    cannot be reached yet: a transient state the caller's retries are for). With ``starting_on`` (a
    queue name), a Redis that answers is told this process is a worker starting on that queue
    (:func:`~llmqueue.queue.heartbeat.mark_starting`)."""
    client = redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        await client.ping()
        if starting_on is not None:
            with contextlib.suppress(RedisError):  # READONLY, OOM, NOPERM: the worker's own start says
                await mark_starting(client, starting_on)
    except AuthenticationError as exc:
        return (
            f"Redis at {redact_url(url)} refused the credentials ({redis_error_line(exc)}): check the "
            "user and password in the Redis URL"
        )
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return None
    except ResponseError as exc:
        return f"Redis at {redact_url(url)} refused the connection ({redis_error_line(exc)})"
    finally:
        await client.aclose()
    return None


async def forget_start(url: str, *, timeout: float = 1.0) -> None:
    """Remove this process's starting mark if it still has one, as it ends without having come up (a
    start that failed or was stopped); within ``timeout`` seconds, or the mark expires by itself."""
    if starting_mark() is None:
        return  # it came up (its first heartbeat removed the mark), or never marked one
    client = redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(clear_starting(client), timeout)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
