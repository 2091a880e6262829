"""Windowed submission: ``llmqueue run`` keeps a bounded number of its batch's jobs in Redis and feeds
more as they finish, so neither Redis nor the first provider call waits on the size of the file.

The window bounds two counts of the batch: the jobs fed and not finished (queued, running or waiting
to retry: what keeps the workers and the limit busy), and, at twice the window, the jobs fed and not yet
written to the output (the finished ones held out of order behind an earlier one). The batch's
``total`` is the file's count of request lines from the start (``status`` shows the whole batch), and
is set to the jobs it really holds once the file is read (``--skip-invalid`` drops its bad lines).
Lines are fed in file order and each chunk is queued and registered in one transaction, so a run killed
at any point is resumed by feeding the file again: lines the batch already lists are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    ) -> None:
        self.batches = batches
        self.batch_id = batch_id
        self.window = window
        self.source = source
        self.report = SubmitReport(batch_id=batch_id, submitted=0, already_known=0, rejected=[])
        self._items = items
        self._cache = cache
        self._answered_from = answered_from
        self.exhausted = False

    async def start(self, declared: int) -> None:
        """Say the batch holds ``declared`` jobs and feed the first window."""
        await self.batches.redis.hset(keys.batch(self.batch_id), "total", declared)
        await self.top_up()

    async def top_up(self) -> int:
        """Feed lines while the window has room; returns how many jobs were fed (or answered)."""
        fed = 0
        while not self.exhausted:
            room = await window_room(self.batches.redis, self.batch_id, self.window, written_bound=True)
            if room <= 0:
                break
            chunk = self._take(min(room, FEED_CHUNK))
            if chunk:
                before = self.report.submitted
                await self.batches.feed_chunk(self.batch_id, chunk, self.report, self._answered_from)
                fed += self.report.submitted - before
        if self.exhausted:
            await self._settle_total()
        return fed

    def _take(self, count: int) -> list[Job]:
        """Up to ``count`` jobs from the file; rejected lines are kept in the report and not counted."""
        chunk: list[Job] = []
        for item in self._items:
            if isinstance(item, LineError):
                self.report.rejected.append(item)
                continue
            item.cache = self._cache
            chunk.append(item)
            if len(chunk) >= count:
                return chunk
        self.exhausted = True
        return chunk

    async def _settle_total(self) -> None:
        """Once the file is read: the batch's total is the jobs it lists (rejected lines are not jobs)."""
        listed = await self.batches.redis.zcard(keys.batch_jobs(self.batch_id))
        await self.batches.redis.hset(keys.batch(self.batch_id), "total", listed)
        if listed == 0:
            await self.batches.forget_if_empty(self.batch_id)
            raise no_valid_line_error(self.source, self.report.rejected)
