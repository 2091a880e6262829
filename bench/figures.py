"""How a benchmark figure is written, the same in the terminal report and on the docs' benchmarks page."""

from __future__ import annotations

from typing import Any


def figure_text(key: str, value: Any) -> str:
    """One figure of a result row (``key`` its column): shares as percentages, three significant digits,
    thousands grouped; nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key.endswith(("share", "busy")):
            return f"{value:.2%}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)
