"""Stops what ``llmqueue run`` started, in order, if ``run`` itself dies (SIGKILL, a crash).

Workers get SIGTERM from the kernel when their parent dies (``die_with_parent``), which alone would let
them finish their calls in flight within their whole shutdown grace. This small process, started in a
session of its own, watches ``run``; once it is gone it gives the workers ``FINISH_SECONDS`` to store
the answers of the calls in flight, then sends those still running SIGINT (the second signal cuts the
grace short: the calls left are abandoned and their jobs go back to the queue for a resume), kills any
still there ``grace`` seconds later, and only then stops Redis (SIGTERM, SIGKILL after
``REDIS_STOP_SECONDS``), which the workers needed meanwhile. No worker outlives ``run`` by more than
``FINISH_SECONDS`` plus ``grace``. When ``run`` stops Redis itself, the reaper exits.

With a Redis of the user's (``--redis-url``) there is no Redis to stop (``REDIS_PID`` 0): ``run`` stops the
reaper as it ends in order; if ``run`` dies instead, the reaper stops the workers and then removes the
run's temporary directory (``--remove DIR``), which ``run`` would have removed itself.

Run as ``python -m llmqueue.ops.reaper PARENT_PID GRACE REDIS_PID [--remove DIR] WORKER_PID...``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable

POLL_SECONDS = 0.2
FINISH_SECONDS = 2.5
REDIS_STOP_SECONDS = 5.0


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Iterable[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for the processes to end; the pids still alive then."""
    left = [pid for pid in pids if alive(pid)]
    deadline = time.monotonic() + seconds
    while left and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        left = [pid for pid in left if alive(pid)]
    return left


def signal_all(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone already
            os.kill(pid, signum)


def reap(parent: int, grace: float, redis_pid: int, workers: list[int], remove: str | None = None) -> None:
    """Watch ``parent``; once it is gone, stop ``workers``, then ``redis_pid`` (0: none), then remove the
    directory ``remove`` (see the module doc)."""
    while alive(parent) and os.getppid() == parent:
        if redis_pid and not alive(redis_pid):
            return  # ``run`` stopped Redis itself: it shut down in order
        time.sleep(POLL_SECONDS)
    signal_all(workers, signal.SIGTERM)  # they have it already from the kernel; harmless twice
    left = wait_gone(workers, FINISH_SECONDS)  # calls answered meanwhile are stored, not paid again
    signal_all(left, signal.SIGINT)  # a second signal of another kind: stop now, without the grace
    signal_all(wait_gone(left, grace), signal.SIGKILL)
    wait_gone(workers, REDIS_STOP_SECONDS)
    if redis_pid:
        signal_all([redis_pid], signal.SIGTERM)
        signal_all(wait_gone([redis_pid], REDIS_STOP_SECONDS), signal.SIGKILL)
    if remove is not None:
        shutil.rmtree(remove, ignore_errors=True)


def main(argv: list[str]) -> None:
    parent, grace, redis_pid, *rest = argv
    remove = None
    if rest[:1] == ["--remove"]:
        remove, rest = rest[1], rest[2:]
    reap(int(parent), float(grace), int(redis_pid), [int(pid) for pid in rest], remove)


if __name__ == "__main__":
    main(sys.argv[1:])
