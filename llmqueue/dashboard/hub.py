"""One reading of the queue per interval, shared by every open page and API call.

The hub reads Redis only while someone looks: a page's event stream keeps a poll loop running (one loop
for all pages, at most one reading per ``interval`` seconds); an API call with no page open reads once,
or takes the last reading if it is fresher than ``interval``. Each reading also adds a point to the
short history the charts draw (requests and tokens per minute of each batch, each scope's requests
against its limit), kept for ``HISTORY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from llmqueue.batches.control import Batches
from llmqueue.dashboard.views import (
    Sample,
    batch_view,
    failure_groups,
    per_minute,
    scope_view,
    spend_view,
    worker_view,
)
from llmqueue.errors import BatchError
from llmqueue.limits.limiter import RateLimiter
from llmqueue.limits.view import scopes as limit_scopes
from llmqueue.ops.registry import WorkerInfo, read_workers
from llmqueue.ops.tasks import cancel_and_wait
from llmqueue.queue.ledger import BatchStatus
from llmqueue.queue.spend_report import read_spending

logger = logging.getLogger("llmqueue.dashboard")

HISTORY_SECONDS = 600.0
CHART_POINTS = 120
"""Points of each chart sent to the page (the history, thinned)."""
CHART_WINDOW = 10.0
"""Seconds over which each chart point's rate is measured."""
MAX_BATCHES = 50
"""The newest batches shown; older ones stay readable through ``/api/batches/{id}``."""
DONE_REREAD_SECONDS = 10.0
"""A finished batch changes only by a retry: its status is read again at most this often."""
FAILURES_REREAD_SECONDS = 10.0
"""Grouping a batch's failures reads all its results: done again at most this often, when they changed."""
WORKERS_REREAD_SECONDS = 5.0
"""The worker registry is found by SCAN, which walks the whole keyspace: read at most this often (a
worker's heartbeat refreshes its entry every 5 s by default)."""


@dataclass
class _History:
    samples: deque[Sample] = field(default_factory=deque)
    chart: deque[tuple[float, float, float]] = field(default_factory=deque)


class Hub:
    """Reads batches, limits and workers through llmqueue's public readers; see the module docstring."""

    def __init__(
        self,
        batches: Batches,
        *,
        interval: float = 1.0,
        deployments: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``deployments`` maps model_list deployment names (limit scopes) to the model they serve;
        ``clock`` gives Unix seconds (the charts' time axis)."""
        self.batches = batches
        self.limiter = RateLimiter(batches.redis)
        self.interval = interval
        self.deployments = deployments or {}
        self.clock = clock
        self.latest: dict[str, Any] | None = None
        self.readings = 0
        self._read_at = -1e18
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._watchers = 0
        self._closed = False
        self._loop: asyncio.Task[None] | None = None
        self._batch_history: dict[str, _History] = {}
        self._scope_history: dict[str, deque[tuple[float, float, float, float]]] = {}
        self._done: dict[str, tuple[BatchStatus, float]] = {}
        self._failures: dict[str, tuple[int, list[dict[str, Any]], float]] = {}
        self._workers: tuple[list[WorkerInfo], float] = ([], -1e18)

    async def snapshot(self) -> dict[str, Any]:
        """The last reading if it is fresher than ``interval``, else a new one."""
        async with self._lock:
            if self.latest is None or self.clock() - self._read_at >= self.interval:
                await self._read()
            assert self.latest is not None
            return self.latest

    async def watch(self) -> AsyncGenerator[dict[str, Any], None]:
        """Each new reading, the current one first, while the caller iterates (a page's event stream)."""
        self._watchers += 1
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._poll_forever())
        try:
            seen = -1
            while True:
                async with self._changed:
                    while not self._closed and (self.readings == seen or self.latest is None):
                        await self._changed.wait()
                    if self._closed or self.latest is None:
                        return
                    seen, latest = self.readings, self.latest
                yield latest
        finally:
            self._watchers -= 1
            if self._watchers == 0:
                await cancel_and_wait(self._loop)
                self._loop = None

    async def close(self) -> None:
        """End every ``watch`` (the server is shutting down) and the poll loop."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()
        await cancel_and_wait(self._loop)

    async def failures(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's failed and cancelled jobs grouped by reason. Read again only when their count
        changed, and at most every ``FAILURES_REREAD_SECONDS``. Raises BatchError for an unknown batch."""
        status = await self.batches.status(batch_id)
        count, now = status.failed + status.cancelled, self.clock()
        cached = self._failures.get(batch_id)
        if cached is not None and (cached[0] == count or now - cached[2] < FAILURES_REREAD_SECONDS):
            return cached[1]
        groups: list[dict[str, Any]] = []
        if count:
            found = [result async for _j, _c, result in self.batches.results(batch_id) if result is not None]
            groups = failure_groups(found)
        self._failures[batch_id] = (count, groups, now)
        return groups

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.snapshot()
            except (RedisError, OSError) as exc:
                logger.warning("dashboard: cannot read Redis: %s", exc)
                async with self._changed:
                    self.latest = {"error": f"cannot read Redis: {exc}", "at": self.clock()}
                    self.readings += 1
                    self._changed.notify_all()
            await asyncio.sleep(self.interval)

    async def _read(self) -> None:
        now = self.clock()
        statuses = await self._statuses(now)
        scopes = [await self.limiter.inspect(scope) for scope in await limit_scopes(self.limiter.redis)]
        paused = await self.batches.pauses.paused_scopes()
        workers, read_at = self._workers
        if now - read_at >= WORKERS_REREAD_SECONDS:
            workers = await read_workers(self.batches.redis)
            self._workers = (workers, now)
        shown = {status.batch_id for status in statuses}
        for gone in [name for name in self._batch_history if name not in shown]:
            del self._batch_history[gone]  # removed, or older than the newest MAX_BATCHES
        batch_views = []
        for status in statuses:
            history = self._batch_history.setdefault(status.batch_id, _History())
            if not status.done or not history.samples:
                self._add_sample(history, status, now)
            view = batch_view(status, history.samples)
            view["chart"] = _thin(list(history.chart)) if not status.done else []
            batch_views.append(view)
        scope_views = []
        for state in scopes:
            points = self._scope_history.setdefault(state.scope, deque())
            points.append((now, state.requests_last_minute, state.rpm, state.rate_limited_last_minute))
            _trim(points, now)
            view = scope_view(replace(state, paused=state.scope in paused), self.deployments)
            view["chart"] = _thin(list(points))
            scope_views.append(view)
        reading = {
            "at": now,
            "interval": self.interval,
            "batches": batch_views,
            "limits": scope_views,
            "paused_scopes": sorted(paused),
            "workers": [worker_view(w, now) for w in workers],
            "spend": spend_view(statuses, now, await read_spending(self.batches.redis, now)),
        }
        async with self._changed:
            self.latest = reading
            self._read_at = now
            self.readings += 1
            self._changed.notify_all()

    async def _statuses(self, now: float) -> list[BatchStatus]:
        names = (await self.batches.list_batches())[-MAX_BATCHES:]
        statuses = []
        for name in reversed(names):  # newest first
            kept = self._done.get(name)
            if kept is not None and now - kept[1] < DONE_REREAD_SECONDS:
                statuses.append(kept[0])
                continue
            try:
                status = await self.batches.status(name)
            except BatchError:
                continue  # removed since it was listed
            if status.done:
                self._done[name] = (status, now)
            else:
                self._done.pop(name, None)
            statuses.append(status)
        return statuses

    def _add_sample(self, history: _History, status: BatchStatus, now: float) -> None:
        samples = history.samples
        samples.append(Sample(now, status.requests, status.tokens, status.finished, status.rate_limited))
        _trim(samples, now, at=lambda s: s.at)
        rates = per_minute(samples, window=CHART_WINDOW)
        if rates is not None:
            history.chart.append((now, round(rates[0], 2), round(rates[1], 1)))
            _trim(history.chart, now)


def _trim(points: deque[Any], now: float, at: Callable[[Any], float] = lambda p: p[0]) -> None:
    while points and now - at(points[0]) > HISTORY_SECONDS:
        points.popleft()


def _thin(points: list[Any]) -> list[Any]:
    """At most ``CHART_POINTS`` of ``points``, evenly spread, the last one kept."""
    if len(points) <= CHART_POINTS:
        return points
    step = len(points) / CHART_POINTS
    return [points[int(i * step)] for i in range(CHART_POINTS - 1)] + [points[-1]]
