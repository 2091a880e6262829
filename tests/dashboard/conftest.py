"""Fixtures of the dashboard's tests: a batch file, and the dashboard served over a real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmqueue.batches.control import Batches
from llmqueue.dashboard import Access, create_app
from llmqueue.producer import Producer

TOKEN = "test-dashboard-token-5e1d"


def write_batch_file(path: Path, lines: int) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16}
            out.write(
                json.dumps(
                    {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
                + "\n"
            )
    return path


@pytest.fixture
def batch_file(tmp_path: Path) -> Callable[[int], Path]:
    return lambda lines: write_batch_file(tmp_path / f"batch-{lines}.jsonl", lines)


@pytest.fixture
def batches(producer: Producer) -> Batches:
    return Batches(producer.store, producer.settings)


@pytest.fixture
async def dashboard(batches: Batches) -> AsyncIterator[TestClient[object, object]]:
    """A client of the dashboard (token ``TOKEN``, reads open on loopback), reading Redis every 0.2 s."""
    assert batches.settings is not None
    app = create_app(batches, batches.settings, Access(token=TOKEN, reads_need_token=False), interval=0.2)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client
