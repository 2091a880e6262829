"""A worker's job slots: how many jobs it may claim now, and how many of those may be ``batch`` jobs."""

from __future__ import annotations


class Slots:
    """``max_jobs`` slots, of which ``reserved`` only jobs above ``batch`` priority may take.

    The ``batch`` jobs held are also capped by what the limiter lets run (additive increase, cut on a
    deferral): a batch job the limiter sends back was claimed for nothing, and with every slot full of
    them a saturated key would have each worker claim, refuse and put back hundreds of jobs a second.
    So a deferral caps the worker's batch jobs at those it runs now, and each one that ends otherwise
    raises the cap by one, up to all unreserved slots.
    """

    def __init__(self, max_jobs: int, reserved: int) -> None:
        self.max_jobs = max_jobs
        self.reserved = reserved
        self.running = 0
        self.low_running = 0
        """``batch`` jobs running now."""
        self.low_cap: int | None = None
        """How many ``batch`` jobs the worker holds at most now (None: all its unreserved slots)."""

    @property
    def free(self) -> int:
        return self.max_jobs - self.running

    @property
    def low_free(self) -> int:
        """How many more ``batch`` jobs may be claimed now."""
        low_slots = self.max_jobs - self.reserved
        return min(low_slots, self.low_cap or low_slots) - self.low_running

    def take(self, *, low: bool) -> None:
        self.running += 1
        if low:
            self.low_running += 1

    def give_back(self, *, low: bool, deferred: bool) -> None:
        """A job's run ended; ``deferred``: the job went back to wait (the limiter refused it)."""
        if low:
            self.adapt_low_cap(deferred=deferred)
            self.low_running -= 1
        self.running -= 1

    def adapt_low_cap(self, *, deferred: bool) -> None:
        """Cut the ``batch`` cap to the batch jobs running but the one deferred, or raise it by one."""
        low_slots = self.max_jobs - self.reserved
        if deferred:
            self.low_cap = max(1, self.low_running - 1)
        elif self.low_cap is not None:
            self.low_cap = None if self.low_cap + 1 >= low_slots else self.low_cap + 1
