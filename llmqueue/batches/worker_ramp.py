"""When ``llmqueue run`` starts its workers after the first.

A worker's start-up is mostly its import of LiteLLM: seconds of CPU. The first worker starts at once;
the others start only once they would end the batch sooner, that is once the first is calling and the
lines left would take the running worker longer, at the rate it has finished lines so far, than another
takes to start (as long as the first took). A file of a few lines is so answered by one worker while a
second would still be importing, and a run whose first worker makes no call (limits, a spent budget)
starts the others ``OTHER_WORKERS_AFTER`` seconds after it came up, as they may be what it waits on.
"""

from __future__ import annotations

from llmqueue.queue.ledger import BatchStatus

__all__ = ["OTHER_WORKERS_AFTER", "WorkerRamp"]

OTHER_WORKERS_AFTER = 3.0
"""Seconds after the first worker came up that the others start even if it has made no call yet."""
SHORTEST_START = 1.0
"""Seconds a worker's start is taken to last at least, however quickly the first came up."""


class WorkerRamp:
    """Decides, at each look at the batch, whether the waiting workers should start now."""

    def __init__(self, first_started_at: float) -> None:
        self.first_started_at = first_started_at
        self.first_up_at: float | None = None
        self.calling_since: float | None = None
        self.finished_before = 0
        """Lines finished when the first call was seen (a resumed batch's earlier ones): not this rate's."""

    @property
    def start_seconds(self) -> float:
        """How long a worker takes to start: as long as the first took, ``SHORTEST_START`` at least."""
        if self.first_up_at is None:
            return SHORTEST_START
        return max(SHORTEST_START, self.first_up_at - self.first_started_at)

    def due(self, status: BatchStatus, *, first_up: bool, now: float) -> bool:
        """Whether to start the other workers now; ``first_up``: the first worker has come up."""
        if self.first_up_at is None:
            if not first_up:
                return False
            self.first_up_at = now
        if not (status.requests or status.finished):
            return now - self.first_up_at > OTHER_WORKERS_AFTER
        if self.calling_since is None:
            self.calling_since, self.finished_before = now, status.finished
        if status.total == 0:  # a big file still being counted
            return True
        left = status.total - status.finished
        if left <= 0:
            return False
        calling = now - self.calling_since
        answered = status.finished - self.finished_before
        if answered <= 0:  # no rate yet: another worker started now would be up by then
            return calling > self.start_seconds
        rate = answered / max(calling, 0.1)
        return left / rate > self.start_seconds
