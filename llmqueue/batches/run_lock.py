"""One ``llmqueue run`` per batch at a time: a second one is refused, never merged with the first.

Two locks, for the two places a batch lives:

- :class:`DirectoryLock`, for an embedded run: an exclusive ``flock`` on a file in the batch's run
  directory, taken before its Redis starts (two Redis servers on one AOF directory would each run every
  job). The kernel drops it when the process dies, however it dies.
- :class:`RedisRunLock`, for ``--redis-url``: a key set only if absent, naming the holder, with a TTL of
  ``TTL_SECONDS`` that the run refreshes while it watches the batch; a killed run's lock expires. A
  run started on the machine of a holder that no longer exists (killed, then resumed at once) takes
  the lock over instead of waiting for it to expire. ``llmqueue results --collect`` takes the same
  lock: it writes the batch's output as a run does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.errors import BatchBusyError

TTL_SECONDS = 30
REFRESH_SECONDS = 10.0

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def holder() -> str:
    """Who holds a lock: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_space() -> str:
    """Which processes a pid names here: this boot of this machine and this PID namespace (containers on
    one host share its boot id, not their namespaces); "" when it cannot be told."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.blake2b(f"{boot}/{namespace}".encode(), digest_size=8).hexdigest()


def _is_gone(token: str) -> bool:
    """Whether the holder named by ``token`` (``host:pid:time:space``) is known to have ended: it ran in
    this process space, and no process of its pid exists. Any doubt (another machine, an older token
    without a space, a pid in use) counts as alive."""
    parts = token.rsplit(":", 3)
    if len(parts) != 4 or not parts[3] or parts[3] != process_space() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by another user
        return False
    return False


class DirectoryLock:
    """``with DirectoryLock(run_dir, batch_id):`` — refuses (BatchBusyError) if another process holds it."""

    def __init__(self, directory: Path, batch_id: str) -> None:
        self.path = directory / "run.lock"
        self.batch_id = batch_id
        self._file: IO[str] | None = None

    def __enter__(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise BatchBusyError(
                f"batch {self.batch_id} is being run by another `llmqueue run` ({owner}); wait for it to "
                "end, or stop it and resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(holder())
        handle.flush()
        self._file = handle
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class RedisRunLock:
    """The run lock of ``batch_id`` in a shared Redis; ``acquire`` raises BatchBusyError if it is held.

    ``doing`` says what the holder does and its command (``("run", "llmqueue run")``), for the
    message another process is refused with; the token is ``doing<TAB>command<TAB>host:pid:time:space``."""

    def __init__(self, redis: Redis, batch_id: str, doing: tuple[str, str] = ("run", "llmqueue run")) -> None:
        self.redis = redis
        self.batch_id = batch_id
        self.key = keys.batch_run_lock(batch_id)
        self.token = "\t".join([*doing, f"{holder()}:{time.time():.0f}:{process_space()}"])
        self._refreshed = 0.0

    async def acquire(self) -> None:
        if not await self.redis.set(self.key, self.token, nx=True, ex=TTL_SECONDS):
            owner = (await self.redis.get(self.key) or b"").decode(errors="replace")
            if (
                owner
                and _is_gone(owner)
                and await self.redis.eval(_TAKE_OVER, 1, self.key, owner, self.token, TTL_SECONDS)
            ):
                self._refreshed = time.monotonic()
                return
            fields = owner.split("\t")
            verb, command = fields[:2] if len(fields) == 3 else ("run", "llmqueue run")  # an older holder
            who = ":".join(fields[-1].split(":")[:2]) if owner else "another process"
            raise BatchBusyError(
                f"batch {self.batch_id} is being {verb} by another `{command}` ({who}); wait for it to end, "
                f"or stop it (its lock expires {TTL_SECONDS} s after it stops)"
            )
        self._refreshed = time.monotonic()

    async def refresh(self) -> None:
        """Extend the lock if ``REFRESH_SECONDS`` passed since the last time (cheap to call often)."""
        if time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        await self.redis.eval(_REFRESH, 1, self.key, self.token, TTL_SECONDS * 1000)
        self._refreshed = time.monotonic()

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self.key, self.token)
