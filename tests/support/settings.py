"""Helpers the tests share: settings for the simulated provider, and a worker run in the test's loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from llmqueue.settings import LLMConfig, Settings, WorkerConfig
from llmqueue.worker import Worker, create_worker

TEST_API_KEY = "sk-test-3f9a8c7e1d2b4a6f"


def make_settings(redis_url: str, base_url: str, **llm: Any) -> Settings:
    """Settings for tests: the simulated model, fast retries, no config file or environment leaks."""
    llm_settings = {
        "model": "openai/sim-model",
        "base_url": base_url,
        "api_key": TEST_API_KEY,
        "retry_min_wait": 0.1,
        "retry_max_wait": 0.4,
        "retry_multiplier": 0.1,
        "timeout": 10,
        **llm,
    }
    limits = llm_settings.pop("limits", {})
    worker = llm_settings.pop("worker", {})
    return Settings(
        redis_url=redis_url,
        llm=LLMConfig(**llm_settings),
        limits=limits,
        worker=WorkerConfig(**{"poll_delay": 0.01, "warm_up": False, **worker}),
    )


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """An llmqueue worker for ``settings`` running in this event loop for the block; at its end the
    worker stops as on SIGTERM, letting the jobs it runs end however long they take."""
    worker = create_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        worker.stop(grace=math.inf)
        if worker.job_loop is None:  # still starting: nothing runs yet
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
