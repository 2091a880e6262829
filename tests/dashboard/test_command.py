"""``llmqueue dashboard`` as a user starts it: the printed address and token, and where it may listen."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from llmqueue.cli import app
from llmqueue.errors import LLMQueueError


def test_listening_beyond_loopback_needs_a_chosen_token() -> None:
    result = CliRunner().invoke(
        app, ["dashboard", "--host", "0.0.0.0"], env={"LLMQUEUE_DASHBOARD_TOKEN": None}
    )
    assert isinstance(result.exception, LLMQueueError)
    assert "LLMQUEUE_DASHBOARD_TOKEN" in str(result.exception)


def test_the_command_prints_an_address_with_its_token_and_serves_the_api(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LLMQUEUE_DASHBOARD_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmqueue", "dashboard", "--port", "0", "--redis-url", redis_url],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "#token=" not in line:
            line = process.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)#token=(\S+)", line)
        assert match, f"no address printed: {line!r}"
        url, token = match[1], match[2]
        assert httpx.get(url + "api/snapshot").json()["batches"] == []
        assert httpx.post(url + "api/batches/none/cancel").status_code == 403
        reply = httpx.post(url + "api/batches/none/cancel", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 404  # the token let it through; there is no such batch
    finally:
        process.terminate()
        process.wait(timeout=10)
