"""The ``llmqueue`` command: a thin shell over the same functions the Python API offers.

``common`` holds the app and what the commands share; importing the command modules registers them.
"""

from llmqueue.cli import (
    batch_commands,
    batch_control_commands,
    cache_commands,
    dashboard_commands,
    limit_commands,
    pause_commands,
    worker_commands,
)
from llmqueue.cli.common import app, main

__all__ = [
    "app",
    "batch_commands",
    "batch_control_commands",
    "cache_commands",
    "dashboard_commands",
    "limit_commands",
    "main",
    "pause_commands",
    "worker_commands",
]
