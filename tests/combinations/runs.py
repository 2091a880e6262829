"""Helpers for the cross-feature tests: ``llmqueue`` run as the user runs it, in a process of its own,
against simulated providers in processes of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import llmqueue

REPO_ROOT = Path(llmqueue.__file__).resolve().parents[1]
RUN_TIMEOUT = 150.0


def clean_env(**settings: str) -> dict[str, str]:
    """The environment of an ``llmqueue`` command: none of the machine's LLM_*, WORKER_*, provider keys
    or Redis settings, only ``settings``; llmqueue importable; unwrapped messages."""
    dropped = ("LLM_", "WORKER_", "BATCH_", "CACHE_", "OPENAI_", "ANTHROPIC_", "AZURE_")
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(dropped) and name not in ("REDIS_URL", "LLMQUEUE_CONFIG")
    }
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, "COLUMNS": "400", **settings}


def llmqueue_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``llmqueue ARGS`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "llmqueue", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
