"""The MkDocs hook that fills each page's ``<!-- generated: NAME -->`` marker at build time.

Named in ``mkdocs.yml`` (``hooks:``). Nothing it renders is written to ``docs/``, so the reference
pages are always those of the code being built, and a stale copy cannot be committed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# MkDocs loads this file by path (and restores sys.path after): the repository root is added when the
# renderers are imported, so ``docgen`` and ``llmqueue`` are found from a source tree.
ROOT = Path(__file__).resolve().parents[1]

MARKER = re.compile(r"<!--\s*generated:\s*([a-z-]+)\s*-->")
# Docstrings use reST roles (:class:`JobResult`); mkdocstrings renders the code, and the role is dropped.
ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc):(?=<code)")


def renderers() -> dict[str, Callable[[], str]]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from docgen import benchmarks, cli, metrics, redis_keys, settings
    from llmqueue.limits.view import CONFIGURED_SHOWN_FOR

    return {
        "settings": settings.render,
        "cli": cli.render,
        "cli-environment": cli.render_environment,
        "redis-keys": redis_keys.render,
        "metrics": metrics.render,
        "benchmarks": benchmarks.render,
        "configured-shown-for": lambda: f"{CONFIGURED_SHOWN_FOR:g} s",
    }


def fill(markdown: str) -> str:
    """``markdown`` with every marker replaced by its page part; an unknown name is an error."""
    known = renderers()

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in known:
            raise KeyError(f"unknown generated part {name!r} (known: {', '.join(sorted(known))})")
        return known[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return fill(markdown)


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub("", html)
