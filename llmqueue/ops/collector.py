"""Importing LiteLLM without the cyclic garbage collector running through it.

LiteLLM's import builds hundreds of thousands of objects, nearly all of them kept for the life of the
process, and every collection their allocations set off walks all of those made so far again: a
quarter of the import's time on this project's machines (``import llmqueue.worker``: 2.3-2.5 s with the
collector, 1.8 s without). Frozen afterwards, they are skipped by later collections too.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block (imports) with the cyclic collector off, then freeze every object alive.

    The few thousand objects the imports made in cycles and dropped are frozen with the rest instead of
    freed. A collector that was off before stays off.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
