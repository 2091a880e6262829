"""Ctrl-C and SIGTERM for a command that runs other processes (``llmqueue run``): stop now, in order.

asyncio's own Ctrl-C handling cancels the main task, which takes effect only at its next ``await``: a
long synchronous step (checking a 200,000-line file before queueing it) would hold an interrupted
``run`` for many seconds, and SIGTERM (a closing terminal, a cancelled CI job) would kill it outright,
leaving its workers to the kernel and its temporary directory behind. Inside :func:`interrupted_by_signals`
both signals raise KeyboardInterrupt in the main thread at once, wherever it is, so the command stops
the way Ctrl-C stops it: its workers first, then what else it started.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    for stop in STOP_SIGNALS:  # one sent with it (SIGTERM and SIGINT together) must not cut the clean-up
        signal.signal(stop, signal.SIG_IGN)
    _interrupt(signum, frame)


@contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt at once in the block (main thread only); the previous
    handlers come back after it. ``asyncio.run`` inside the block keeps these handlers."""
    with _handled_by(_interrupt):
        yield


@contextmanager
def interrupted_once() -> Iterator[None]:
    """As :func:`interrupted_by_signals`, but the first signal also ignores those after it until the
    block ends, so the clean-up it leads to runs whole; the previous handlers come back after it."""
    with _handled_by(_interrupt_once):
        yield


@contextmanager
def _handled_by(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
