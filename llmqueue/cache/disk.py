"""The default response store: one SQLite file in WAL mode, shared by every worker process on the machine.

WAL lets readers go on while one process writes; each process talks to the file from one thread of its
own (so the event loop never waits on a lock held by another process), and a write that meets
another process's lock waits up to ``BUSY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from llmqueue.cache.store import CacheStats
from llmqueue.errors import CacheError

FILE_NAME = "responses.sqlite3"
BUSY_TIMEOUT = 10.0
EVICTION_CHECK_EVERY = 64
"""Puts between two checks of the total size (one row, ``totals``)."""
HIT_FLUSH_EVERY = 256
HIT_FLUSH_SECONDS = 2.0
"""Hits are written (``used``, ``hits``) in one transaction per this many keys or seconds, and at close:
a write per hit made every worker process of a cached rerun queue for the file's write lock."""

T = TypeVar("T")

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of a file with the current schema (0: a file from before the ``totals`` row)."""
_REMOVED_TRIGGER = """CREATE TRIGGER IF NOT EXISTS responses_removed AFTER DELETE ON responses
    BEGIN UPDATE totals SET bytes = bytes - old.size WHERE id = 0; END"""
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        used REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS responses_used ON responses (used)",
    "CREATE INDEX IF NOT EXISTS responses_created ON responses (created)",
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL)",
    "INSERT OR REPLACE INTO totals (id, bytes) SELECT 0, COALESCE(SUM(size), 0) FROM responses",
    """CREATE TRIGGER IF NOT EXISTS responses_added AFTER INSERT ON responses
        BEGIN UPDATE totals SET bytes = bytes + new.size WHERE id = 0; END""",
    _REMOVED_TRIGGER,
    """CREATE TRIGGER IF NOT EXISTS responses_resized AFTER UPDATE OF size ON responses
        BEGIN UPDATE totals SET bytes = bytes + new.size - old.size WHERE id = 0; END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
"""The ``totals`` row is the sum of ``size`` kept by triggers in each write's own transaction, so the
size check costs one row however many responses the file holds (a sum over the table, every
``EVICTION_CHECK_EVERY`` puts, made a million-line run's cache quadratic). It is made, from one sum, by
the first process to open a file without it; the others see the version and read nothing."""


class DiskStore:
    """Responses in ``directory/responses.sqlite3``; ``ttl`` seconds (None: no expiry), ``max_bytes`` in all.

    Raises CacheError when the directory cannot be created or the file is not a usable database.
    """

    def __init__(self, directory: Path, *, ttl: float | None, max_bytes: int) -> None:
        self.path = directory / FILE_NAME
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmqueue-cache")
        self._db: sqlite3.Connection | None = None
        self._puts = 0
        self._hits: dict[str, int] = {}
        self._hits_written = time.monotonic()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._thread.submit(self._open).result()
        except (OSError, sqlite3.Error) as exc:
            self._thread.shutdown(wait=False)
            raise CacheError(f"cannot use the response cache at {self.path}: {exc}") from None

    def _open(self) -> None:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if _schema_version(db) < SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                if _schema_version(db) < SCHEMA_VERSION:  # not made by another process meanwhile
                    for statement in _SCHEMA:  # not executescript: it would commit first
                        db.execute(statement)
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
            raise
        self._db = db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def get(self, key: str) -> dict[str, Any] | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            now = time.time()
            row = db.execute("SELECT body, created FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            if self.ttl is not None and row[1] < now - self.ttl:
                db.execute("DELETE FROM responses WHERE key = ?", (key,))
                return None
            self._hits[key] = self._hits.get(key, 0) + 1
            self._write_hits_if_due(db)
            return bytes(row[0])

        body = await self._run(read)
        return None if body is None else _loads(body)

    async def has(self, key: str) -> bool:
        def read(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT created FROM responses WHERE key = ?", (key,)).fetchone()
            return row is not None and (self.ttl is None or row[0] >= time.time() - self.ttl)

        return await self._run(read)

    async def put(self, key: str, response: dict[str, Any]) -> None:
        body = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()
        self._puts += 1
        check = self._puts % EVICTION_CHECK_EVERY == 1

        def write(db: sqlite3.Connection) -> None:
            now = time.time()
            # An upsert, not INSERT OR REPLACE: the replaced row's delete would not fire its trigger.
            db.execute(
                "INSERT INTO responses (key, body, size, created, used, hits) VALUES (?, ?, ?, ?, ?, 0) "
                "ON CONFLICT (key) DO UPDATE SET body = excluded.body, size = excluded.size, "
                "created = excluded.created, used = excluded.used, hits = 0",
                (key, body, len(body), now, now),
            )
            if check:
                self._evict(db)
            else:
                self._write_hits_if_due(db)

        await self._run(write)

    def _write_hits_if_due(self, db: sqlite3.Connection) -> None:
        """Write the hits counted so far once there are enough of them or they are old enough. A file
        locked past ``BUSY_TIMEOUT`` costs nothing now: the counts wait for the next write."""
        due = time.monotonic() - self._hits_written >= HIT_FLUSH_SECONDS
        if due or len(self._hits) >= HIT_FLUSH_EVERY:
            with contextlib.suppress(sqlite3.Error):
                self._write_hits(db)

    def _write_hits(self, db: sqlite3.Connection) -> None:
        """Record the hits counted since the last write, in one transaction; kept for the next write if
        this one fails."""
        hits, self._hits, self._hits_written = self._hits, {}, time.monotonic()
        if not hits:
            return
        now = time.time()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE responses SET used = ?, hits = hits + ? WHERE key = ?",
                [(now, count, key) for key, count in hits.items()],
            )
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for key, count in hits.items():
                self._hits[key] = self._hits.get(key, 0) + count
            raise

    def _evict(self, db: sqlite3.Connection) -> None:
        """Delete the least recently used entries (and any expired ones) until under ``max_bytes``."""
        self._write_hits(db)  # recency first
        if self.ttl is not None:
            db.execute("DELETE FROM responses WHERE created < ?", (time.time() - self.ttl,))
        (total,) = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        excess = int(total) - self.max_bytes
        if excess <= 0:
            return
        doomed, freed = _first_to_free(db.execute("SELECT key, size FROM responses ORDER BY used"), excess)
        if freed < excess:
            # Every entry read, and all of them less than the excess: the total had drifted (an older
            # llmqueue's INSERT OR REPLACE fires no delete trigger). What was read is the true total.
            db.execute("UPDATE totals SET bytes = ? WHERE id = 0", (freed,))
            doomed, _freed = _first_to_free(doomed, freed - self.max_bytes)
        db.executemany("DELETE FROM responses WHERE key = ?", [(key,) for key, _size in doomed])

    async def stats(self) -> CacheStats:
        def read(db: sqlite3.Connection) -> tuple[int, int, int]:
            self._write_hits(db)
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(hits), 0) FROM responses"
            ).fetchone()
            return int(row[0]), int(row[1]), int(row[2])

        entries, size, hits = await self._run(read)
        return CacheStats(
            backend="disk",
            location=str(self.path),
            entries=entries,
            bytes=size,
            hits=hits,
            max_bytes=self.max_bytes,
            ttl=self.ttl,
        )

    async def clear(self) -> int:
        def wipe(db: sqlite3.Connection) -> int:
            self._hits = {}
            # Without the delete trigger SQLite empties the table at once instead of row by row (the
            # write lock held meanwhile), and the total is set to 0, whatever it had drifted to.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DROP TRIGGER IF EXISTS responses_removed")
                count = db.execute("DELETE FROM responses").rowcount
                db.execute("UPDATE totals SET bytes = 0")
                db.execute(_REMOVED_TRIGGER)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                    db.execute("ROLLBACK")
                raise
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("VACUUM")
            return int(count)

        return await self._run(wipe)

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            # Hit counts and recency are bookkeeping: a file locked at exit costs only them.
            with contextlib.suppress(sqlite3.Error):
                self._write_hits(db)
            db.close()

        if self._db is not None:
            await self._run(shut)
            self._db = None
        self._thread.shutdown(wait=False)


def _first_to_free(entries: Iterable[tuple[str, int]], excess: int) -> tuple[list[tuple[str, int]], int]:
    """The first of ``entries`` (key, size), in their order, whose sizes add up to ``excess``, and that
    sum (less than ``excess`` when all of them do not reach it)."""
    taken: list[tuple[str, int]] = []
    freed = 0
    for key, size in entries:
        if freed >= excess:
            break
        taken.append((key, size))
        freed += size
    return taken, freed


def _schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _loads(body: bytes) -> dict[str, Any] | None:
    data = json.loads(body)
    return data if isinstance(data, dict) else None
