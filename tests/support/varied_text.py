"""Request files of varied English text, as users' prompts are: slices of the standard library's own
docstrings, so compression is measured on prose rather than on one repeated phrase."""

from __future__ import annotations

import ast
import random
import sysconfig
from functools import cache
from pathlib import Path
from typing import Any

_SOURCES = [
    "argparse.py",
    "textwrap.py",
    "subprocess.py",
    "asyncio/tasks.py",
    "logging/__init__.py",
    "typing.py",
    "inspect.py",
    "unittest/case.py",
    "http/client.py",
    "email/message.py",
    "tarfile.py",
    "decimal.py",
    "_pydecimal.py",
    "pathlib.py",
    "functools.py",
    "shutil.py",
    "os.py",
    "socket.py",
    "ssl.py",
    "threading.py",
]


@cache
def corpus() -> str:
    """The docstrings of a few standard library modules, one text (about 400 KB)."""
    library = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for name in _SOURCES:
        tree = ast.parse((library / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(" ".join(doc.split()))
    return " ".join(texts)


def varied_lines(
    count: int, *, seed: int = 0, prompt_chars: int = 600, **fields: Any
) -> list[dict[str, Any]]:
    """``count`` chat requests whose prompts are ``prompt_chars`` of prose from random places."""
    text = corpus()
    rng = random.Random(seed)
    lines = []
    for n in range(count):
        start = rng.randrange(len(text) - prompt_chars)
        prompt = f"Question {n} ({rng.randrange(10**6)}): {text[start : start + prompt_chars]}"
        lines.append({"custom_id": f"q{n}", "messages": [{"role": "user", "content": prompt}], **fields})
    return lines
