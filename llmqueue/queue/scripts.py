"""The queue's Lua scripts (``lua/``), with the helpers they share, and the clock their scores use."""

from __future__ import annotations

import time
from importlib import resources

from llmqueue import keys

_LUA = resources.files("llmqueue.queue").joinpath("lua")
_LIB = (
    _LUA.joinpath("ready_lib.lua")
    .read_text(encoding="utf-8")
    .replace("@IN_PROGRESS@", keys.arq_in_progress(""))
    .replace("@JOB@", keys.arq_job(""))
    .replace("@BATCH@", keys.batch(""))
)


def script(name: str) -> str:
    """A queue script with the shared helpers (``ready_lib.lua``) in front."""
    return _LIB + "\n" + _LUA.joinpath(name).read_text(encoding="utf-8")


def now_ms() -> int:
    """Now in ms on this machine's clock, as arq scores its queue."""
    return int(time.time() * 1000)


def lane_of(batch_id: str | None) -> str:
    """The lane a job waits in: its batch's, or the shared one of jobs without a batch."""
    return batch_id or ""
