"""Helpers the tests share: settings for the simulated provider, and a worker run in the test's loop."""

from __future__ import annotations

import asyncio
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
    """An arq worker for ``settings`` running in this event loop for the block."""
    worker = create_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        # Let jobs that are finishing (arq's bookkeeping after a result) end before stopping.
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for job_task in worker.tasks.values():
            job_task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await worker.close()
