"""When ``llmqueue run`` starts its workers after the first.

A worker's start-up is mostly its import of LiteLLM: seconds of CPU. The first worker starts at once;
the others start only once they would end the batch sooner: lines are waiting that the running worker
has not taken, and those left would take it longer, at the rate its calls have answered lines since
this run's first call, than another worker takes to start (as long as the first took). A file of a
few lines, all taken by the first worker at once, is so answered while a second would still be
importing; lines the run answers from the response cache wait for no worker. A first worker that
makes no call while lines wait (limits, a spent budget) gets the others ``OTHER_WORKERS_AFTER``
seconds after it came up and the last line finished, as they may be what it waits on. The lines left
include those the cache will answer, so a partly cached file may start the others sooner than needed.
"""

from __future__ import annotations

import math

from llmqueue.queue.ledger import BatchStatus

__all__ = ["OTHER_WORKERS_AFTER", "WorkerRamp"]

OTHER_WORKERS_AFTER = 3.0
"""Seconds after the first worker came up, and after the last line finished (from the cache, say), that
the others start while lines wait and it has made no call yet."""
SHORTEST_START = 1.0
"""Seconds a worker's start is taken to last at least, however quickly the first came up."""


class WorkerRamp:
    """Decides, at each look at the batch, whether the waiting workers should start now."""

    def __init__(self) -> None:
        self.first_up_at: float | None = None
        self.start_seconds = SHORTEST_START
        """How long a worker takes to start: as long as the first took, ``SHORTEST_START`` at least."""
        self.requests_before: int | None = None
        """Provider requests of the batch at the run's first look (a resumed batch's): not this run's."""
        self.calling_since: float | None = None
        self.called_before = 0
        """Lines answered by calls when this run's first call was seen: not this rate's."""
        self.finished_seen, self.progress_at = -1, -math.inf
        """Lines finished at the last look, and when that count last grew."""

    def first_up(self, *, start_seconds: float, now: float) -> None:
        """The run's first worker came up, ``start_seconds`` after it was started."""
        self.first_up_at = now
        self.start_seconds = max(SHORTEST_START, start_seconds)

    def calls_made(self, status: BatchStatus) -> int:
        """Provider requests this run has made (the first look at the batch counts none)."""
        if self.requests_before is None:
            self.requests_before = status.requests
        return status.requests - self.requests_before

    def due(self, status: BatchStatus, *, now: float) -> bool:
        """Whether to start the other workers now."""
        made = self.calls_made(status)
        if status.finished != self.finished_seen:
            if self.finished_seen >= 0:  # not the first look: lines finished since the last
                self.progress_at = now
            self.finished_seen = status.finished
        if self.first_up_at is None:
            return False
        if status.total and status.queued + status.retry_waiting == 0:
            return False  # every line left is in a worker's hands
        if made <= 0:
            # No call yet: lines the run answers from the cache are progress no worker makes faster.
            return now - max(self.first_up_at, self.progress_at) > OTHER_WORKERS_AFTER
        # Lines answered from the response cache cost no call: they say nothing of a worker's rate.
        called = status.finished - status.cached
        if self.calling_since is None:
            self.calling_since, self.called_before = now, called
        if status.total == 0:  # a big file still being counted
            return True
        calling = now - self.calling_since
        answered = called - self.called_before
        if answered <= 0:  # no rate yet: another worker started now would be up by then
            return calling > self.start_seconds
        rate = answered / max(calling, 0.1)
        return (status.total - status.finished) / rate > self.start_seconds
