"""Which modules an ``llmqueue`` command imports: LiteLLM's import costs seconds of CPU in every
process, and some of LiteLLM's (and others') parts cost more again."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

_MAIN_THEN_TELL = (
    "import json, sys\nfrom llmqueue.cli import main\nasked = json.loads(sys.argv.pop(1))\ntry:\n"
    "    main()\nfinally:\n    print('imported:', json.dumps([m for m in asked if m in sys.modules]))\n"
)


def modules_imported_by(
    args: list[str],
    modules: Iterable[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``llmqueue ARGS`` in a process of its own: how it ended, and which of ``modules`` it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _MAIN_THEN_TELL, json.dumps(list(modules)), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    told = [line for line in done.stdout.splitlines() if line.startswith("imported: ")]
    assert told, (done.stdout, done.stderr)
    return done, set(json.loads(told[-1].removeprefix("imported: ")))


def litellm_imported_by(
    args: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run ``llmqueue ARGS`` in a process of its own: how it ended, and whether LiteLLM was imported."""
    done, imported = modules_imported_by(args, ["litellm"], env=env, cwd=cwd)
    return done, "litellm" in imported
