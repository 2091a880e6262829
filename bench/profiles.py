"""Where a profiled worker's time went, from a pyinstrument session file.

Two views of the samples: self time by package (who burns the CPU: llmqueue, arq, redis-py, pydantic,
LiteLLM and the HTTP stack under it, the event loop), and inclusive time of each llmqueue and arq
function (which step of handling a job costs what). Time the event loop spends waiting in
``select`` is idle, not work, and is reported apart.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from pyinstrument.frame_info import frame_info_get_identifier
from pyinstrument.session import Session

_SITE_PACKAGE = re.compile(r"site-packages/([A-Za-z0-9_]+)")
_STDLIB = re.compile(r"/python3\.\d+/([A-Za-z0-9_]+)")
_OWN = ("llmqueue", "arq")
IDLE = "idle (event loop waiting)"


def package_of(path: str) -> str:
    """The package a source file belongs to: ``llmqueue``, a site-package's name, or ``stdlib <module>``."""
    if "/llmqueue/" in path:
        return "llmqueue"
    found = _SITE_PACKAGE.search(path)
    if found:
        return found[1]
    found = _STDLIB.search(path)
    if found:
        return f"stdlib {found[1]}"
    return path or "<unknown>"


def _parts(frame_info: str) -> tuple[str, str]:
    function, path, *_ = [*frame_info_get_identifier(frame_info).split("\x00"), "", ""]
    return function, path


def summarize(path: Path, jobs: int, *, top: int = 30) -> dict[str, Any]:
    """Milliseconds per job: self time by package, and inclusive time by function.

    C functions (``<built-in>``) count for the package that called them. The functions listed are
    llmqueue's and arq's, plus each frame where control enters another package (``litellm`` from
    llmqueue, ``openai`` from ``litellm`` ...), so the cost of a whole LiteLLM call shows as one line.
    """
    session = Session.load(path)
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    for stack, seconds in session.frame_records:
        frames = [_parts(info) for info in stack]
        function, file = frames[-1]
        if function == "select" and file.endswith("selectors.py"):
            by_package[IDLE] += seconds
            continue
        packages = [package_of(file) for _, file in frames]
        owner = next((p for p in reversed(packages) if not p.startswith("<")), "<unknown>")
        by_package[owner] += seconds
        seen: set[str] = set()
        for index, ((function, file), package) in enumerate(zip(frames, packages, strict=True)):
            entry = index > 0 and package != packages[index - 1] and not package.startswith(("<", "stdlib"))
            if package in _OWN or entry:
                name = f"{package}/{Path(file).name}:{function}"
                if name not in seen:
                    seen.add(name)
                    by_function[name] += seconds
    per_job = 1000 / jobs
    busy = sum(seconds for package, seconds in by_package.items() if package != IDLE)
    return {
        "jobs": jobs,
        "profiled_seconds": session.duration,
        "cpu_seconds": session.cpu_time,
        "busy_ms_per_job": busy * per_job,
        "by_package_ms_per_job": {
            package: seconds * per_job
            for package, seconds in by_package.most_common()
            if seconds * per_job >= 0.02
        },
        "by_function_ms_per_job": {name: seconds * per_job for name, seconds in by_function.most_common(top)},
    }


def render_text(path: Path, lines: int = 45) -> str:
    """The top of pyinstrument's own call-tree view of the session."""
    from pyinstrument.renderers import ConsoleRenderer

    session = Session.load(path)
    text = ConsoleRenderer(unicode=True, color=False, show_all=False, time="percent_of_total").render(session)
    return "\n".join(text.splitlines()[:lines])
