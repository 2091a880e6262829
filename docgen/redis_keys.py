"""The Redis keys table: every key builder of ``llmqueue.keys``, its pattern and its docstring."""

from __future__ import annotations

import inspect

from docgen.markdown import cell, code, prose, table


def rows() -> list[tuple[str, str, str]]:
    """(function, key pattern, what it holds) for each key builder, in the module's order."""
    from llmqueue import keys

    out = []
    for name, function in inspect.getmembers(keys, inspect.isfunction):
        if function.__module__ != keys.__name__ or name.startswith("_"):
            continue
        placeholders = [f"<{parameter}>" for parameter in inspect.signature(function).parameters]
        out.append((name, str(function(*placeholders)), inspect.getdoc(function) or ""))
    order = list(vars(keys))
    return sorted(out, key=lambda row: order.index(row[0]))


def render() -> str:
    """The generated part of the queue internals page."""
    from llmqueue import keys

    lines = [prose(keys.__doc__), ""]
    lines.append(
        table(
            ["key", "built by", "what it holds"],
            (
                [code(pattern), code(f"keys.{name}()"), cell(prose(doc.split("\n\n")[0]))]
                for name, pattern, doc in rows()
            ),
        )
    )
    ready = inspect.getdoc(keys.ready_prefix) or ""
    lines += [
        "",
        "The ready structures under `keys.ready_prefix(queue)`:",
        "",
        prose(ready.split("\n\n", 1)[-1]),
    ]
    return "\n".join(lines) + "\n"
