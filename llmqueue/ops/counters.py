"""How many jobs a worker ended, retried and deferred, as ``llmqueue health`` shows them.

llmqueue counts from the runner's job events, not from the queue's side: a job sent back to the queue
is either *retried* (its provider call failed and the retry schedule sends it back: an attempt spent)
or *deferred* (the limiter, a 429 cooldown or an identical call in flight sent it back before any
call: no attempt spent). arq's worker counts both as ``j_retried``; here they stay apart.

:class:`JobCounter` is an event sink; each worker's heartbeat writes its counts into the worker's
registry entry (``jobs_<name>`` fields), and :meth:`JobCounts.total` adds up those of the live workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from llmqueue.ops.events import JobEvent

__all__ = ["FIELD_PREFIX", "JobCounter", "JobCounts"]

FIELD_PREFIX = "jobs_"
"""Prefix of the counts' fields in a worker's registry entry."""


@dataclass
class JobCounts:
    """Job events of one worker (or, added up, of several) since it started."""

    succeeded: int = 0
    """Jobs that ended with an answer (from the provider or the response cache)."""
    failed: int = 0
    """Jobs that ended failed: retries spent, a permanent error, or a payload that could not run."""
    cancelled: int = 0
    """Jobs of a cancelled or over-budget batch, ended without a call."""
    retried: int = 0
    """Failed provider calls whose job went back to the queue to be tried again (attempts spent)."""
    deferred: int = 0
    """Jobs the limiter, a 429 cooldown or an identical call in flight sent back before calling (no
    attempt spent)."""
    rerouted: int = 0
    """Jobs whose deployment failed and was taken out, sent to another deployment (no attempt spent)."""
    interrupted: int = 0
    """Calls cut off by a worker stop (the job runs again; no attempt spent)."""

    def as_fields(self) -> dict[str, int]:
        """The counts as registry fields (``jobs_succeeded`` …)."""
        return {FIELD_PREFIX + f.name: getattr(self, f.name) for f in fields(self)}

    def as_text(self) -> str:
        """``succeeded=3 failed=0 …``: the health-check line's part."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def from_fields(cls, data: Mapping[str, str]) -> JobCounts:
        """Counts from registry fields; a field that is missing (an older worker) counts 0."""
        return cls(**{f.name: int(data.get(FIELD_PREFIX + f.name, 0)) for f in fields(cls)})

    @classmethod
    def total(cls, counts: Iterable[JobCounts]) -> JobCounts:
        summed = cls()
        for one in counts:
            for f in fields(cls):
                setattr(summed, f.name, getattr(summed, f.name) + getattr(one, f.name))
        return summed

    def describe(self) -> str:
        """One line for people: what ended, then what went back to the queue and why."""
        ended = f"{self.succeeded} succeeded, {self.failed} failed"
        if self.cancelled:
            ended += f", {self.cancelled} cancelled"
        back = (
            f"{self.retried} retried after a failed call, "
            f"{self.deferred} deferred by the limiter (no attempt spent)"
        )
        if self.rerouted:
            back += f", {self.rerouted} rerouted"
        if self.interrupted:
            back += f", {self.interrupted} interrupted by a stop"
        return f"{ended}; {back}"


_COUNTED_AS = {
    "succeeded": "succeeded",
    "cached": "succeeded",
    "failed": "failed",
    "invalid": "failed",
    "cancelled": "cancelled",
    "retrying": "retried",
    "deferred": "deferred",
    "rerouted": "rerouted",
    "interrupted": "interrupted",
}


class JobCounter:
    """An event sink counting a worker's job events into :attr:`counts`."""

    def __init__(self) -> None:
        self.counts = JobCounts()

    def __call__(self, event: JobEvent) -> None:
        name = _COUNTED_AS.get(event.event)
        if name is not None:
            setattr(self.counts, name, getattr(self.counts, name) + 1)
