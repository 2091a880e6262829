"""Worker processes, and child processes that do not outlive the process that started them.

:func:`start_worker` is the one way llmqueue (``llmqueue run``), its benchmarks and its tests start a
worker process, with one environment policy (:func:`worker_environment`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from llmqueue.settings.sources import ENV_PREFIXES, REDIS_FIELDS

_PR_SET_PDEATHSIG = 1
#: Environment variables that configure llmqueue or LiteLLM: a worker started with ``inherit_settings=False``
#: sees none of this process's, only those it is given.
SETTING_PREFIXES = (
    *ENV_PREFIXES.values(),
    *(field.upper() for field in REDIS_FIELDS),
    "LLMQUEUE_",
    "LITELLM_LOG",
)


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


def stop_workers_now(workers: Iterable[subprocess.Popen[Any]], *, timeout: float) -> None:
    """Stop ``llmqueue worker`` processes without their shutdown grace: each gets SIGTERM and SIGINT at
    once, its graceful stop and the second signal that cuts the grace short (its calls in flight are
    dropped and their jobs go back to the queue); those still there after ``timeout`` seconds are
    killed (their jobs go back once their claim expires, ``in_progress_ttl``)."""
    workers = list(workers)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # two signals of one kind could merge into one
            worker.send_signal(signal.SIGINT)
    stop_processes(workers, timeout=timeout, stop_signal=None)


def worker_environment(settings: Mapping[str, str], *, inherit_settings: bool) -> dict[str, str]:
    """The environment of a worker process: this process's, then ``settings`` over it.

    ``inherit_settings`` keeps this process's llmqueue and LiteLLM variables (``llmqueue run`` hands
    the user's ``LLM_*`` to its workers); without it they are dropped, so a test or benchmark worker runs
    with exactly the settings given. LiteLLM's bundled price map is used unless asked otherwise.
    """
    base = dict(os.environ)
    if not inherit_settings:
        base = {k: v for k, v in base.items() if not k.startswith(SETTING_PREFIXES)}
    base.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return {**base, **settings}


def start_worker(
    settings: Mapping[str, str],
    *,
    stdin: IO[Any] | int | None = subprocess.DEVNULL,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.STDOUT,
    args: Sequence[str] = (),
    cwd: Path | None = None,
    inherit_settings: bool = False,
    own_session: bool = False,
    command: Sequence[str] | None = None,
    text: bool = False,
) -> subprocess.Popen[Any]:
    """Start ``llmqueue worker ARGS`` (or ``command``) with :func:`worker_environment`.

    The child dies with this process (Linux). ``own_session`` puts it in its own process group, so a
    terminal's Ctrl-C reaches only the parent, which then stops its workers in order.
    """
    return subprocess.Popen(
        list(command or [sys.executable, "-m", "llmqueue", "worker"]) + list(args),
        env=worker_environment(settings, inherit_settings=inherit_settings),
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        start_new_session=own_session,
        preexec_fn=die_with_parent,
    )
