"""Windowed submission: ``llmqueue run`` keeps a bounded number of its batch's jobs in Redis and feeds
more as they finish, so neither Redis nor the first provider call waits on the size of the file.

The window bounds two counts of the batch: the jobs fed and not finished (queued, running or waiting
to retry: what keeps the workers and the limit busy), and, at twice the window, the jobs fed and not yet
written to the output (the finished ones held out of order behind an earlier one). The batch's
``total`` is the file's count of request lines (``status`` shows the whole batch): from the start when
the file was checked, else once counted (``count_total``: in a thread after the first window is fed, so
the first call does not wait on reading the whole file; until then ``total`` is 0, and the batch is not
done). It is set to the jobs the batch really holds once the file is read (``--skip-invalid`` drops
its bad lines).
Lines are fed in file order and each chunk is queued and registered in one transaction, so a run killed
at any point is resumed by feeding the file again: lines the batch already lists are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from llmqueue import keys
from llmqueue.batches.input import LineError
from llmqueue.batches.submit import SubmitReport, no_valid_line_error
from llmqueue.batches.window_bounds import (
    ASSUMED_LATENCY,
    FEED_CHUNK,
    WINDOW_CEILING,
    WINDOW_FLOOR,
    window_room,
    window_size,
)
from llmqueue.cache import CacheStore
from llmqueue.models import Job
from llmqueue.settings import Settings

if TYPE_CHECKING:
    from llmqueue.batches.control import Batches

__all__ = [
    "ASSUMED_LATENCY",
    "FEED_CHUNK",
    "WINDOW_CEILING",
    "WINDOW_FLOOR",
    "WindowFeeder",
    "count_requests",
    "window_room",
    "window_size",
]


def count_requests(path: Path) -> int:
    """The non-blank lines of ``path``: its requests, if every line is valid (read as bytes, fast)."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip() and line.strip() != b"\xef\xbb\xbf")


class WindowFeeder:
    """Feeds a batch from its file as its jobs finish; ``top_up()`` at each look at the batch."""

    def __init__(
        self,
        batches: Batches,
        batch_id: str,
        source: Path,
        items: Iterator[Job | LineError],
        *,
        window: int,
        cache: bool,
        answered_from: tuple[CacheStore, Settings] | None,
        checked_through: Callable[[], float] | None = None,
    ) -> None:
        self.batches = batches
        self.batch_id = batch_id
        self.window = window
        self.source = source
        self.report = SubmitReport(batch_id=batch_id, submitted=0, already_known=0, rejected=[])
        self._items = items
        self._cache = cache
        self._answered_from = answered_from
        # A file checked while it runs (llmqueue.batches.check_ahead): no line past what the check
        # passed is fed; the line the feeding stopped at waits in ``_next_item``.
        self._checked_through = checked_through
        self._next_item: Job | LineError | None = None
        self.exhausted = False
        self._total_lock = asyncio.Lock()
        self._settled = False
        self._counting: asyncio.Task[None] | None = None

    async def start(self, declared: int | None) -> None:
        """Say the batch holds ``declared`` jobs (None: not known yet, see ``declare``) and feed the
        first window."""
        if declared is not None:
            await self.declare(declared)
        await self.top_up()

    async def declare(self, total: int) -> None:
        """Say the batch holds ``total`` jobs (``status`` shows it; the batch is done once they are)."""
        await self.batches.redis.hset(keys.batch(self.batch_id), "total", total)

    def count_total(self) -> None:
        """Count the file's request lines in a thread and declare them, unless the file has been read
        whole first (its end sets the exact total)."""
        if not self._settled:
            self._counting = asyncio.create_task(self._count_total())

    async def _count_total(self) -> None:
        with contextlib.suppress(OSError):  # the feeder's own reading of the file reports it
            lines = await asyncio.to_thread(count_requests, self.source)
            async with self._total_lock:
                if not self._settled:
                    await self.declare(lines)

    async def top_up(self) -> int:
        """Feed lines while the window has room; returns how many jobs were fed (or answered)."""
        fed = 0
        while not self.exhausted:
            room = await window_room(self.batches.redis, self.batch_id, self.window, written_bound=True)
            if room <= 0:
                break
            wanted = min(room, FEED_CHUNK)
            chunk = self._take(wanted)
            if chunk:
                before = self.report.submitted
                await self.batches.feed_chunk(self.batch_id, chunk, self.report, self._answered_from)
                fed += self.report.submitted - before
            if len(chunk) < wanted and not self.exhausted:
                break  # the check has not passed the next line yet
        if self.exhausted:
            await self._settle_total()
        return fed

    def _take(self, count: int) -> list[Job]:
        """Up to ``count`` jobs from the file; rejected lines are kept in the report and not counted.
        Fewer, with the file not exhausted, when the check has not passed the next line."""
        chunk: list[Job] = []
        while len(chunk) < count:
            item, self._next_item = self._next_item, None
            if item is None:
                item = next(self._items, None)
            if item is None:
                self.exhausted = True
                break
            if self._checked_through is not None and (
                isinstance(item, LineError) or item.metadata["line"] > self._checked_through()
            ):
                self._next_item = item  # a bad line stops the run (the check says so) before it is fed
                break
            if isinstance(item, LineError):
                self.report.rejected.append(item)
                continue
            item.cache = self._cache
            chunk.append(item)
        return chunk

    async def _settle_total(self) -> None:
        """Once the file is read: the batch's total is the jobs it lists (rejected lines are not jobs)."""
        async with self._total_lock:
            self._settled = True
            listed = await self.batches.redis.zcard(keys.batch_jobs(self.batch_id))
            await self.declare(listed)
        if self._counting is not None:
            self._counting.cancel()
        if listed == 0:
            await self.batches.forget_if_empty(self.batch_id)
            raise no_valid_line_error(self.source, self.report.rejected)
