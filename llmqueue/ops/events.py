"""Job events: what the runner reports as a job moves along, for logs and metrics.

The runner emits one :class:`JobEvent` per step to every sink it was given; a sink is any callable
taking the event. Sinks must not raise: one that does is logged and skipped, never fails the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from llmqueue.limits.view import ScopeState

logger = logging.getLogger("llmqueue.ops.events")

EventName = Literal[
    "started",  # a provider call is about to be made
    "succeeded",
    "cached",  # answered from the response cache: no provider call, no limiter token
    "failed",  # final: no retry left, or a permanent error
    "retrying",  # a failed call; the job goes back to the queue for ``wait`` seconds
    "deferred",  # the limiter (or a cooldown) sent the job back for ``wait`` seconds; not an attempt
    "limiter_wait",  # the job waited ``wait`` seconds in place for the limiter
    "cancelled",  # its batch was cancelled or spent
    "invalid",  # the payload could not be run
    "interrupted",  # the worker stopped during the call; the job will run again
    "rerouted",  # its deployment failed and was taken out; another one takes the job, no attempt spent
]


@dataclass(frozen=True)
class JobEvent:
    """One step of one job. Times in seconds; ``reason`` is an error kind (``rate_limit``, ``auth`` …)."""

    event: EventName
    job_id: str
    batch_id: str | None = None
    model: str | None = None
    scope: str | None = None
    deployment: str | None = None
    attempt: int = 0
    latency: float | None = None
    wait: float | None = None
    reason: str | None = None
    message: str | None = None
    status_code: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    worker_id: str | None = None
    priority: int | None = None

    def fields(self) -> dict[str, Any]:
        """The event's set fields, for structured logs."""
        return {name: value for name in _FIELD_NAMES if (value := getattr(self, name)) is not None}


_FIELD_NAMES = tuple(JobEvent.__dataclass_fields__)
EventSink = Callable[[JobEvent], None]


@runtime_checkable
class LimitListener(Protocol):
    """An event sink that also wants each scope's limit state now and then (the worker's metrics)."""

    def observe_limits(self, state: ScopeState) -> None: ...


def emit(sinks: Sequence[EventSink], event: JobEvent) -> None:
    for sink in sinks:
        try:
            sink(event)
        except Exception:
            logger.exception("event sink %r failed on %s", sink, event.event)


_LEVELS = {"failed": logging.WARNING, "invalid": logging.WARNING}
job_logger = logging.getLogger("llmqueue.jobs")


def log_event(event: JobEvent) -> None:
    """The default sink: one log line per job event on ``llmqueue.jobs``, its fields in ``extra``."""
    level = _LEVELS.get(event.event, logging.INFO)
    if not job_logger.isEnabledFor(level):
        return
    fields = event.fields()
    text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("event", "job_id", "message"))
    if event.message:
        text += f" message={event.message!r}"
    job_logger.log(
        level,
        "job %s %s %s",
        event.job_id,
        event.event,
        text,
        extra={"job_event": fields},
    )
