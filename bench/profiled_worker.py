"""``python -m bench.profiled_worker OUT``: ``llmqueue worker`` under pyinstrument, profiled on demand.

SIGUSR1 starts the profiler and SIGUSR2 stops it and saves the session to ``OUT`` (a ``.pyisession``
file), so the profile covers the measured batch only: not the imports, not the warm-up.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

from pyinstrument import Profiler

from llmqueue.cli import main as llmqueue_main

INTERVAL = 0.001  # seconds between samples (pyinstrument's default)


def main() -> None:
    out = Path(sys.argv[1])
    profiler = Profiler(interval=INTERVAL, async_mode="disabled")

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        partial = out.with_suffix(".partial")
        profiler.stop().save(partial)
        partial.replace(out)  # whoever waits for ``out`` never reads half a file

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["llmqueue", "worker"]
    llmqueue_main()


if __name__ == "__main__":
    main()
