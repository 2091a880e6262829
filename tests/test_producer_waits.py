"""A producer waiting for results with no worker running says so, once, within seconds."""

from __future__ import annotations

import logging

import pytest

from llmqueue.errors import ResultTimeoutError
from llmqueue.producer import NO_WORKER_NOTICE, Producer
from llmqueue.settings import Settings


async def test_waiting_with_no_live_worker_logs_why_once_for_all_handles(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmqueue.producer")
    async with Producer(settings) as producer:
        handles = await producer.submit_many(
            [{"messages": [{"role": "user", "content": f"Hallo {n}"}]} for n in range(20)]
        )
        with pytest.raises(ResultTimeoutError):
            async for _ in producer.as_completed(handles, timeout=NO_WORKER_NOTICE + 2):
                pass
    notices = [r.getMessage() for r in caplog.records if "no llmqueue worker is running" in r.getMessage()]
    assert len(notices) == 1, notices
    assert "queue llmqueue:queue" in notices[0] and "llmqueue worker" in notices[0]
