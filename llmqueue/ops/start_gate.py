"""The start gate of the workers ``llmqueue run`` starts before it has checked its file.

A gated worker (``llmqueue worker --gated``) connects, imports LiteLLM and starts its services like any
other, then takes no job until the line ``open`` arrives on its standard input, a pipe ``run`` holds the
other end of. ``run`` writes that line once its file passed the check and its batch exists; on a shared
Redis the worker would otherwise take other batches' jobs for a run that may still be refused. The end of the
input closes the gate for good: the worker stops, having taken nothing. So a gate cannot stay closed
while its worker lives on: a refused run stops its workers, and a run that dies closes the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
from typing import IO, Any

from llmqueue.errors import LLMQueueError

OPEN_LINE = b"open\n"

__all__ = ["OPEN_LINE", "close_gate", "open_gate", "require_pipe", "wait_for_opening"]


def require_pipe(stream: IO[Any]) -> None:
    """Raise LLMQueueError unless ``stream`` is a pipe (a file or a terminal would never open the gate)."""
    if not stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode):
        raise LLMQueueError("--gated needs its standard input to be a pipe (as `llmqueue run` gives it)")


async def wait_for_opening(stream: IO[Any], stopping: asyncio.Event) -> bool:
    """Wait for the line ``open`` on ``stream`` (a pipe): True once it came; False for another line, at
    the end of the input, or once ``stopping`` is set (the worker was told to stop meanwhile)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    line = asyncio.ensure_future(reader.readline())
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({line, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (line, stopped):
            task.cancel()
        transport.close()
    return not stopping.is_set() and line.done() and not line.cancelled() and line.result() == OPEN_LINE


def open_gate(worker: subprocess.Popen[Any]) -> None:
    """Let a worker started gated (its standard input a pipe) take jobs. A worker that has exited is
    left alone: the run's check of its workers says why it exited."""
    if worker.stdin is None or worker.stdin.closed:
        return
    with contextlib.suppress(OSError):  # BrokenPipeError: it exited
        worker.stdin.write(OPEN_LINE)
        worker.stdin.flush()
    close_gate(worker)


def close_gate(worker: subprocess.Popen[Any]) -> None:
    """Close the pipe to a worker: one still gated stops, having taken nothing."""
    if worker.stdin is not None and not worker.stdin.closed:
        with contextlib.suppress(OSError):
            worker.stdin.close()
