"""Whether an ``llmqueue`` command imports LiteLLM, whose import costs seconds of CPU in every process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

_MAIN_THEN_TELL = (
    "import sys\nfrom llmqueue.cli import main\ntry:\n    main()\nfinally:\n"
    "    print('litellm imported:', 'litellm' in sys.modules)\n"
)


def litellm_imported_by(
    args: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run ``llmqueue ARGS`` in a process of its own: how it ended, and whether LiteLLM was imported."""
    done = subprocess.run(
        [sys.executable, "-c", _MAIN_THEN_TELL, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    told = [line for line in done.stdout.splitlines() if line.startswith("litellm imported:")]
    assert told, (done.stdout, done.stderr)
    return done, told[-1].endswith("True")
