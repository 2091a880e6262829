"""Writes that matter, acknowledged only once a replica holds them (Redis ``WAIT``).

Replication is asynchronous: what a master accepted just before it died may be missing on the
replica the sentinels promote. A submission acknowledged to the user, a stored result and the batch
counters written with them therefore go through :meth:`ReplicaWait.confirmed`: the write, then
``WAIT <replicas> <timeout>``, and only then the acknowledgement.

``WAIT`` covers the writes made earlier on the connection it runs on, and a pool hands out any
connection: so each round first writes a marker on its own connection (the replication stream is
in order, a replica past the marker holds everything written before it) and waits for that. Callers
that arrive while a round runs share the next one, so a busy worker waits once per round trip, not
once per result.

A write the replicas did not confirm in time is made once more (every write given is idempotent):
after a failover it may have been lost with the old master, and the new one needs it. Then it is
acknowledged with a warning (no replica holds it yet); until replicas confirm writes again, a round
waits only while enough replicas are connected (``ROLE``), so a master left alone does not hold every
write for the whole timeout. Connection errors (the master died, the
sentinels have not promoted a replica yet) make the whole write and its wait go again, for up to
``patience`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmqueue import keys
from llmqueue.redaction import redis_error_line
from llmqueue.settings import Settings

logger = logging.getLogger("llmqueue.replication")
T = TypeVar("T")

FAILOVER_PATIENCE = 60.0
"""Seconds a write that matters is tried again while Redis cannot be reached (a failover's length:
the sentinels' ``down-after-milliseconds`` and the election)."""
FAILOVER_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, NoScriptError, OSError)
"""What a failover looks like to a client: no connection, a demoted master, a new master that has not
loaded the script yet."""


async def through_failover(command: Callable[[], Awaitable[T]], patience: float = FAILOVER_PATIENCE) -> T:
    """``await command()`` (an idempotent one), tried again on the errors of a failover for up to
    ``patience`` seconds: right after one, a sentinel that has not heard of it yet still names the old
    master for a moment."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            return await command()
        except FAILOVER_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.info("Redis command to be retried (%s)", redis_error_line(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class ReplicaWait:
    """Confirms writes on ``replicas`` replicas, waiting at most ``timeout`` seconds for them."""

    def __init__(
        self, redis: Redis, *, replicas: int, timeout: float, patience: float = FAILOVER_PATIENCE
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be 1 or more, got {replicas}")
        self.redis = redis
        self.replicas = replicas
        self.timeout = timeout
        self.patience = patience
        self._next: asyncio.Future[int] | None = None
        self._running: asyncio.Task[None] | None = None
        self._short = False
        """True since a round got fewer replicas than wanted (warned once until they are back)."""

    async def confirmed(self, write: Callable[[], Awaitable[T]]) -> T:
        """``await write()`` (an idempotent write) acknowledged by the replicas; its first answer.

        Connection errors for up to ``patience`` seconds make the write and its wait go again; after
        that the last one is raised.
        """
        return await through_failover(lambda: self._write_and_wait(write), self.patience)

    async def _write_and_wait(self, write: Callable[[], Awaitable[T]]) -> T:
        answer = await write()
        acknowledged = await self.wait()
        if acknowledged >= self.replicas:
            if self._short:
                logger.info("Redis replicas acknowledge writes again")
                self._short = False
            return answer
        await write()  # lost with a master that died before its replica had it? Written again.
        if not self._short:
            logger.warning(
                "Redis WAIT: %d of %d replica(s) acknowledged a write within %gs; writes are "
                "acknowledged without a replica copy until one is back (set redis_wait_replicas=0 "
                "where no replica is expected)",
                acknowledged,
                self.replicas,
                self.timeout,
            )
            self._short = True
        return answer

    async def wait(self) -> int:
        """How many replicas hold every write made before this call (a round begun after it)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._running is None or self._running.done():
                self._running = asyncio.ensure_future(self._rounds())
        return await asyncio.shield(self._next)

    async def _rounds(self) -> None:
        """Run rounds while callers wait for one; one ``WAIT`` at a time per process."""
        while self._next is not None:
            future, self._next = self._next, None  # who comes from now on waits for the next round
            try:
                acknowledged = await self._round()
            except Exception as exc:  # handed to every caller of this round
                future.set_exception(exc)
                future.exception()  # retrieved here: a caller cancelled meanwhile leaves no warning
            else:
                future.set_result(acknowledged)

    async def _round(self) -> int:
        if self._short:
            # Short of replicas (the master just promoted has none yet): no wait while fewer are
            # connected than wanted, as none could acknowledge anything.
            connected = len((await self.redis.execute_command("ROLE"))[2])
            if connected < self.replicas:
                return connected
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(keys.replication_mark())
            pipe.execute_command("WAIT", self.replicas, int(self.timeout * 1000))
            _, acknowledged = await pipe.execute()
        return int(acknowledged)


def replica_wait(redis: Redis, settings: Settings, url: str) -> ReplicaWait | None:
    """The waits the settings ask for on ``url`` (None: writes are acknowledged at once)."""
    replicas = settings.wait_replicas(url)
    return ReplicaWait(redis, replicas=replicas, timeout=settings.redis_wait_timeout) if replicas else None
