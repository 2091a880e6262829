"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: on Linux the child gets SIGTERM when its parent dies, even by SIGKILL.

    Children started in their own session (so a terminal's Ctrl-C reaches only the parent, which stops
    them in order) would otherwise keep running if the parent were killed outright.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_processes(
    processes: Iterable[subprocess.Popen[Any]],
    *,
    timeout: float,
    stop_signal: signal.Signals | None = signal.SIGTERM,
) -> None:
    """Send ``stop_signal`` to every process still running (None: they were asked to stop some other
    way), wait up to ``timeout`` seconds for each, and SIGKILL those still there."""
    processes = list(processes)
    if stop_signal is not None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(stop_signal)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
