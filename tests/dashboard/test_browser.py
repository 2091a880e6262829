"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) against a batch
running on the simulated provider.

Without chromium or playwright these tests skip, except in CI (``CI=true``), where they fail: CI
installs chromium (``.ci/run``). Screenshots of each page go to ``$LLMQUEUE_TEST_ARTIFACTS/dashboard``
(default: the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from llmqueue.batches.control import Batches
from llmqueue.dashboard import Access, create_app
from llmqueue.producer import Producer
from llmqueue.queue.spending import SpendGate
from llmqueue.settings import BudgetConfig, Settings, SpendLimit
from llmqueue.simulator.server import ProviderConfig, run_provider
from tests.dashboard.conftest import TOKEN
from tests.support.settings import TEST_API_KEY, make_settings, running_worker
from tests.support.spending import pay_then_hold

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROVIDER_RPM = 120
CONFIGURED_RPM = 480
"""Above the provider's: the provider answers 429s, which the page must show."""

pytestmark = pytest.mark.slow


def require_browser() -> Any:
    """Playwright's async API, or a skip (a failure when ``CI=true``) saying what is missing."""
    missing = []
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        missing.append(f"chromium ({CHROMIUM}; Debian: apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI must run them")
        pytest.skip(message)
    return async_playwright


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("LLMQUEUE_TEST_ARTIFACTS") or tmp_path) / "dashboard"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    async_playwright = require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(20_000)
            yield page
        finally:
            await browser.close()


@asynccontextmanager
async def running_batch(
    redis_url: str, batch_file: Callable[[int], Path]
) -> AsyncIterator[tuple[Batches, str]]:
    """A 400-line batch running on one worker against a provider that refuses above 120 requests/min,
    and the dashboard's URL."""
    config = ProviderConfig(api_key=TEST_API_KEY, rpm=PROVIDER_RPM, latency=0.05, rate_limit_headers="none")
    async with run_provider(config) as provider:
        settings: Settings = make_settings(redis_url, provider.base_url, rpm=CONFIGURED_RPM)
        async with Producer(settings) as producer:
            batches = Batches(producer.store, settings)
            await batches.submit_file(batch_file(400), "eval-run")
            app = create_app(batches, settings, Access(token=TOKEN, reads_need_token=False), interval=0.5)
            async with TestServer(app, host="127.0.0.1") as server, running_worker(settings):
                yield batches, str(server.make_url("/"))
                await batches.cancel("eval-run")


async def progress_text(page: Any) -> str:
    return str(await page.locator("[data-batch='eval-run'] .progress-text").inner_text())


async def test_the_page_follows_a_running_batch_pauses_it_and_its_scope_and_cancels_it_with_the_token(
    redis_url: str, batch_file: Callable[[int], Path], artifacts: Path
) -> None:
    async with running_batch(redis_url, batch_file) as (batches, url), browser_page() as page:
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        await page.goto(url + "#batches")
        card = page.locator("[data-batch='eval-run']")
        await card.wait_for()
        first = await progress_text(page)
        for _ in range(100):
            await asyncio.sleep(0.2)
            if await progress_text(page) != first:
                break
        moved = await progress_text(page)
        assert moved != first, f"progress stayed at {first!r} without a reload"
        assert navigations == [url + "#batches"], "the page was not reloaded"
        assert await page.locator("#connection").inner_text() == "live"
        await card.locator("svg.chart path.series").wait_for()
        await page.wait_for_function(  # a few points of the throughput line, for the screenshot
            "() => (document.querySelector(\"[data-batch='eval-run'] path.series\")"
            "?.getAttribute('d') || '').split('L').length > 6"
        )
        await page.screenshot(path=artifacts / "batches.png", full_page=True)

        await page.click("nav a[data-page='limits']")
        limits = page.locator("table.limits tbody tr", has_text="openai/sim-model")
        await limits.wait_for()
        assert "480/min" in await limits.inner_text()
        assert "configured" in await limits.inner_text()
        rate_limited = limits.locator("td").nth(10)
        for _ in range(100):
            if int((await rate_limited.inner_text()).replace(",", "")) > 0:
                break
            await asyncio.sleep(0.2)
        assert int((await rate_limited.inner_text()).replace(",", "")) > 0, "no 429 shown"
        await page.locator("figure.scope-chart svg path.series").first.wait_for()
        await page.screenshot(path=artifacts / "limits.png", full_page=True)

        await page.click("nav a[data-page='workers']")
        await page.locator("table.workers tbody tr").wait_for()
        assert str(os.getpid()) in await page.locator("table.workers").inner_text()
        await page.screenshot(path=artifacts / "workers.png", full_page=True)

        await page.click("nav a[data-page='spend']")
        await page.locator(".spend", has_text="eval-run").first.wait_for()
        await page.screenshot(path=artifacts / "spend.png", full_page=True)

        await page.click("nav a[data-page='batches']")
        refused = await page.evaluate(
            "fetch('/api/batches/eval-run/cancel', {method: 'POST'}).then((r) => r.status)"
        )
        assert refused == 403
        await card.locator("button.cancel").click()  # no token in the page yet: it asks for one
        await page.locator("#notice", has_text="token").wait_for()
        assert not (await batches.status("eval-run")).cancel_requested

        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.fill("#token", TOKEN)
        await page.locator("#token").dispatch_event("change")
        await card.locator("button.pause").click()
        await page.locator("#notice", has_text="batch eval-run paused").wait_for()
        assert (await batches.status("eval-run")).paused
        await card.locator(".badge", has_text="paused").wait_for()
        await page.screenshot(path=artifacts / "paused.png", full_page=True)
        await card.locator("button.resume").click()
        # The pause's notice says "until it is resumed" too: wait for the resume's own.
        await page.locator("#notice", has_text="batch eval-run resumed").wait_for()
        assert not (await batches.status("eval-run")).paused
        await card.locator("button.pause").wait_for()
        await page.click("nav a[data-page='limits']")
        await limits.locator("button.pause").click()
        await page.locator("#notice", has_text="scope openai/sim-model paused").wait_for()
        assert set(await batches.pauses.paused_scopes()) == {"openai/sim-model"}
        await limits.locator("td", has_text="paused").wait_for()
        await limits.locator("button.resume").click()
        await page.locator("#notice", has_text="scope openai/sim-model resumed").wait_for()
        assert await batches.pauses.paused_scopes() == {}
        await page.click("nav a[data-page='batches']")
        await card.locator("button.cancel").click()
        await page.locator("#notice", has_text="cancelled").wait_for()
        status = await batches.status("eval-run")
        assert status.cancel_requested
        assert status.cancelled > 0
        await card.locator(".badge", has_text="cancel").wait_for()  # cancelling, then cancelled
        await card.locator("details.failures summary").click()
        await card.locator("details.failures td", has_text="cancelled").first.wait_for()
        await page.screenshot(path=artifacts / "cancelled.png", full_page=True)


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tests.dashboard.test_browser as module

    monkeypatch.setattr(module, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run them"):
        require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        require_browser()


async def test_the_spend_page_shows_spend_by_model_against_the_limits_its_warnings_and_held_jobs(
    redis_url: str, batches: Batches, artifacts: Path
) -> None:
    spend = SpendGate(batches.redis, BudgetConfig(daily=1.0, models={"gpt-4o": SpendLimit(daily=5.0)}))
    await pay_then_hold(spend, "gpt-4o", 1.0, batch_id="eval-run")
    assert batches.settings is not None
    app = create_app(batches, batches.settings, Access(token=TOKEN, reads_need_token=False), interval=0.5)
    async with TestServer(app, host="127.0.0.1") as server, browser_page() as page:
        await page.goto(str(server.make_url("/")) + "#spend")
        await page.locator(".spend-held").wait_for()
        held = await page.locator(".spend-held").inner_text()
        warning = await page.locator(".spend-warning").first.inner_text()
        today = await page.locator(".spend-period").first.locator("table.spend-models").inner_text()
        whole = await page.locator("#spend").inner_text()
        await page.screenshot(path=artifacts / "spend-limits.png", full_page=True)

    assert held.startswith("1 job(s) held: the daily spending limit for all models ($1) is reached")
    assert warning == "Spending warning: all models: 100% of the daily limit ($1)"
    assert "null" not in whole and "undefined" not in whole
    assert "gpt-4o\t$1.0000\t\N{EN DASH}\t$5.0000\t20%" in today
