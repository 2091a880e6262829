"""The ``llmqueue`` command run in process, away from the machine's settings.

``clean_environment`` is a fixture (registered by ``tests/conftest.py``); a module that wants it for
every test says ``pytestmark = pytest.mark.usefixtures("clean_environment")``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from llmqueue.cli import app
from llmqueue.settings.sources import ENV_PREFIXES

runner = CliRunner()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LLM_*/WORKER_*/BATCH_*/CACHE_*/REDIS_*/LLMQUEUE_CONFIG from the machine (whatever their case:
    settings match names so), no ./config.toml, and messages that rich does not wrap at 80 columns (they
    name long temporary paths)."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith((*ENV_PREFIXES.values(), "REDIS_")) or upper == "LLMQUEUE_CONFIG":
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.chdir(tmp_path)


def cli(*args: str) -> Result:
    """Run the app in process and require exit code 0."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result
