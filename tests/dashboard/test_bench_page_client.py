"""The benchmarks' stand-in for an open page asks the dashboard what the page's script asks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from bench.page_client import Page
from llmqueue.batches.control import Batches
from llmqueue.dashboard.server import STATIC
from llmqueue.settings import Settings
from llmqueue.simulator.server import RunningProvider
from tests.support.settings import running_worker


async def test_the_page_loads_its_files_follows_snapshots_and_reads_changed_failures_once(
    settings: Settings,
    provider: RunningProvider,
    dashboard: TestClient[Any, Any],
    batches: Batches,
    batch_file: Callable[[int], Path],
) -> None:
    provider.fail_next(2, 400)
    await batches.submit_file(batch_file(5), "failing")
    async with running_worker(settings):
        await batches.wait("failing", interval=0.1)
    async with aiohttp.ClientSession(base_url=str(dashboard.make_url("/"))) as session:
        page = Page(session)
        await page.load()
        following = asyncio.create_task(page.follow())
        while page.counts.snapshots < 20:  # one a reading (every 0.2 s): longer than FAILURES_EVERY
            await asyncio.sleep(0.05)
        following.cancel()
    files = [f for f in STATIC.iterdir() if f.name.endswith((".js", ".css"))]
    assert page.counts.page_requests == 1 + len(files)
    assert page.counts.connections == 1
    # Asked once: after that read, the count it knows is the batch's count, so it does not ask again.
    assert page.counts.failure_reads == 1
    assert page.failures["failing"].total == 2
