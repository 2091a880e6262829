"""Small helpers shared by the page renderers."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence


def cell(text: str) -> str:
    """Text made safe for one Markdown table cell: no line breaks, no column bars, no raw HTML."""
    return escape_html(" ".join(text.split())).replace("|", "\\|")


def code(text: str) -> str:
    """Inline code that survives a table cell (its bars escaped; a backtick inside widens the fence)."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    escaped = text.replace("|", "\\|")
    return f"{fence}{pad}{escaped}{pad}{fence}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table; cells are used as given (make them safe with :func:`cell` first)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def prose(docstring: str | None) -> str:
    """A docstring as Markdown: reST's double-backtick literals as single ones, roles dropped."""
    if not docstring:
        return ""
    text = inspect.cleandoc(docstring).replace("``", "`")
    text = re.sub(r":(?:func|class|meth|attr|mod|data):`", "`", text)
    return escape_html(text)


def escape_html(text: str) -> str:
    """``<`` and ``>`` outside inline code written as entities, so ``[llm.<name>]`` is not a tag."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)
