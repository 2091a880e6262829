"""How the worker loop meets Redis errors: waiting through what can heal, stopping on what cannot."""

from __future__ import annotations

import logging

from redis.exceptions import AuthenticationError, NoPermissionError, OutOfMemoryError, ReadOnlyError

from llmqueue.errors import RedisRefusedError
from llmqueue.redaction import redis_error_line

logger = logging.getLogger("llmqueue.worker")


class RedisOutage:
    """How the poll loop meets Redis errors: it waits through what can heal and stops on what cannot.

    - A lost connection or a Redis restarting: polled again after 1 s, doubling to 30 s.
    - Redis refusing writes (out of memory under ``noeviction``, a read-only replica): the claim script
      is refused before it takes a job, so the worker takes none (it would pay for answers it could not
      store) and asks again with the same backoff, said once until Redis accepts writes again.
    - Refused credentials or permissions (a changed password, an ACL): waiting cannot heal them; the
      worker stops with :class:`RedisRefusedError` after its running jobs end.
    """

    first_delay = 1.0
    max_delay = 30.0

    def __init__(self, where: str) -> None:
        self._where = where
        self._said: str | None = None
        self._delay = self.first_delay

    def wait_after(self, exc: BaseException) -> float:
        """Seconds to wait before the next poll; raises RedisRefusedError for what cannot heal."""
        line = redis_error_line(exc)
        if isinstance(exc, AuthenticationError | NoPermissionError):
            raise RedisRefusedError(
                f"Redis at {self._where} refused this worker ({line}): check the user, password and ACL "
                "in the Redis URL; the worker stopped"
            ) from None
        kind = type(exc).__name__  # one line per kind: Redis words one refusal differently in a script
        if kind != self._said:
            if isinstance(exc, OutOfMemoryError | ReadOnlyError):
                logger.error(
                    "Redis at %s refuses writes (%s): taking no job until it accepts them", self._where, line
                )
            else:
                logger.warning("Redis at %s unavailable (%s); polling again", self._where, line)
            self._said = kind
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay)
        return delay

    def ended(self) -> None:
        """A poll went through: the next error starts a new outage."""
        if self._said is not None:
            logger.warning("Redis at %s answers again; taking jobs", self._where)
            self._said = None
        self._delay = self.first_delay
