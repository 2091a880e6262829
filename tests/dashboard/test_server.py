"""The dashboard's JSON API and event stream over a real Redis, a real worker and the simulated provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from llmqueue.batches.control import Batches
from llmqueue.dashboard import Access, create_app
from llmqueue.dashboard.server import HUB
from llmqueue.queue.spending import SpendGate
from llmqueue.settings import BudgetConfig, Settings, SpendLimit
from llmqueue.simulator.server import RunningProvider
from tests.dashboard.conftest import TOKEN
from tests.support.settings import running_worker
from tests.support.spending import pay_then_hold

Client = TestClient[Any, Any]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_snapshot_shows_a_batch_as_status_computes_it(
    dashboard: Client, batches: Batches, batch_file: Callable[[int], Path]
) -> None:
    await batches.submit_file(batch_file(5), "b1")
    reply = await dashboard.get("/api/snapshot")
    assert reply.status == 200
    reading = await reply.json()
    [shown] = reading["batches"]
    expected = (await batches.status("b1")).to_json()
    assert {k: shown[k] for k in ("batch_id", "total", "queued", "succeeded", "failed")} == {
        k: expected[k] for k in ("batch_id", "total", "queued", "succeeded", "failed")
    }
    assert shown["state"] == "running"
    assert reading["spend"]["today"]["by_batch"] == {"b1": 0.0}
    assert await (await dashboard.get("/api/batches")).json() == reading["batches"]
    assert (await (await dashboard.get("/api/batches/b1")).json())["total"] == 5
    assert (await dashboard.get("/api/batches/nope")).status == 404


async def test_cancel_needs_the_token(
    dashboard: Client, batches: Batches, batch_file: Callable[[int], Path]
) -> None:
    await batches.submit_file(batch_file(4), "b2")
    refused = await dashboard.post("/api/batches/b2/cancel")
    assert refused.status == 403
    assert (await batches.status("b2")).cancelled == 0
    wrong = await dashboard.post("/api/batches/b2/cancel", headers={"Authorization": "Bearer guess"})
    assert wrong.status == 403
    done = await dashboard.post("/api/batches/b2/cancel", headers=AUTH)
    assert done.status == 200
    assert (await done.json())["cancelled"] == 4
    assert (await batches.status("b2")).cancelled == 4


async def test_an_action_from_another_site_is_refused_even_with_the_token(
    dashboard: Client, batches: Batches, batch_file: Callable[[int], Path]
) -> None:
    await batches.submit_file(batch_file(2), "b3")
    reply = await dashboard.post("/api/batches/b3/cancel", headers={**AUTH, "Origin": "http://evil.example"})
    assert reply.status == 403
    assert (await batches.status("b3")).cancelled == 0


async def test_reads_refuse_a_host_other_than_loopback(dashboard: Client) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: the Host header gives it away."""
    assert (await dashboard.get("/api/snapshot", headers={"Host": "evil.example:8787"})).status == 403
    assert (await dashboard.get("/", headers={"Host": "evil.example:8787"})).status == 403
    assert (await dashboard.get("/api/snapshot")).status == 200


async def test_a_chosen_token_closes_reads_but_not_the_page(batches: Batches) -> None:
    assert batches.settings is not None
    app = create_app(batches, batches.settings, Access.from_token(TOKEN), interval=0.2)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/api/workers")).status == 403
        assert (await client.get("/api/workers", headers=AUTH)).status == 200
        page = await client.get("/")
        assert page.status == 200
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


async def test_retry_requeues_failed_jobs_through_retry_failed(
    dashboard: Client, batches: Batches, batch_file: Callable[[int], Path]
) -> None:
    await batches.submit_file(batch_file(3), "b4")
    reply = await dashboard.post("/api/batches/b4/retry", headers=AUTH)
    assert reply.status == 200
    assert await reply.json() == {"batch_id": "b4", "requeued": 0}
    assert (await dashboard.post("/api/batches/nope/retry", headers=AUTH)).status == 404


async def read_events(client: Client, count: int) -> list[dict[str, Any]]:
    readings = []
    async with client.get("/api/events") as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        buffer = b""
        async for chunk in stream.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                data = b"".join(line[6:] for line in block.split(b"\n") if line.startswith(b"data: "))
                readings.append(json.loads(data))
                if len(readings) == count:
                    return readings
    return readings


async def test_pages_share_one_reading_per_interval(dashboard: Client) -> None:
    """Three open pages for about a second read Redis about five times (interval 0.2 s), not fifteen."""
    hub = dashboard.server.app[HUB]
    before = hub.readings
    pages = await asyncio.gather(*(read_events(dashboard, 6) for _ in range(3)))
    assert all(len(readings) == 6 for readings in pages)
    assert [r["at"] for r in pages[0][1:]] == [r["at"] for r in pages[1][1:]]  # the same readings
    assert hub.readings - before <= 8
    await asyncio.sleep(0.5)
    idle = hub.readings
    await asyncio.sleep(0.6)
    assert hub.readings == idle, "no page open: the hub stops reading Redis"


async def test_a_running_batch_and_its_limit_scope_are_shown(
    settings: Settings, dashboard: Client, batches: Batches, batch_file: Callable[[int], Path]
) -> None:
    limited = settings.model_copy(update={"llm": settings.llm.model_copy(update={"rpm": 600})})
    await batches.submit_file(batch_file(6), "live")
    async with running_worker(limited):
        await batches.wait("live", interval=0.1)
        reading = await (await dashboard.get("/api/snapshot")).json()
        assert [w["queue"] for w in reading["workers"]] == [settings.worker.queue_name]
    [batch] = reading["batches"]
    assert (batch["succeeded"], batch["state"]) == (6, "done")
    [scope] = reading["limits"]
    assert scope["scope"] == "openai/sim-model"
    assert (scope["rpm"], scope["source"]) == (600, "configured")
    assert scope["requests_last_minute"] == 6


async def test_failures_are_grouped_by_reason_with_examples(
    settings: Settings,
    provider: RunningProvider,
    dashboard: Client,
    batches: Batches,
    batch_file: Callable[[int], Path],
) -> None:
    provider.fail_next(2, 400)
    await batches.submit_file(batch_file(5), "failing")
    async with running_worker(settings):
        await batches.wait("failing", interval=0.1)
    reply = await dashboard.get("/api/batches/failing/failures")
    assert reply.status == 200
    [group] = await reply.json()
    assert group["count"] == 2
    assert [example["status_code"] for example in group["examples"]] == [400, 400]
    assert (await dashboard.post("/api/batches/failing/retry", headers=AUTH)).status == 200
    assert (await batches.status("failing")).failed == 0


async def test_spend_shows_each_model_against_its_limit_and_the_held_jobs(
    dashboard: Client, batches: Batches
) -> None:
    spend = SpendGate(batches.redis, BudgetConfig(daily=1.0, models={"m": SpendLimit(monthly=10.0)}))
    await pay_then_hold(spend, "m", 1.0, batch_id="b1")

    shown = await (await dashboard.get("/api/spend")).json()

    assert shown["today"]["spent"] == 1.0 and shown["today"]["limit"] == 1.0 and shown["today"]["reached"]
    assert shown["month"]["by_model"]["m"] == {
        "spent": 1.0,
        "in_flight": 0.0,
        "limit": 10.0,
        "share": 0.1,
        "warning": False,
        "reached": False,
    }
    assert shown["warnings"] == ["all models: 100% of the daily limit ($1)"]
    assert (
        shown["held"] == 1
        and "daily spending limit for all models ($1) is reached" in shown["held_reasons"][0]
    )


async def test_pause_and_resume_need_the_token_and_refuse_other_sites(
    dashboard: Client, batches: Batches, batch_file: Callable[[int], Path]
) -> None:
    await batches.submit_file(batch_file(3), "b6")
    for path in ("/api/batches/b6/pause", "/api/limits/openai%2Fsim-model/pause"):
        assert (await dashboard.post(path)).status == 403
        assert (await dashboard.post(path, headers={**AUTH, "Origin": "http://evil.example"})).status == 403
    assert not (await batches.status("b6")).paused
    assert await batches.pauses.paused_scopes() == {}
    paused = await dashboard.post("/api/batches/b6/pause", headers=AUTH)
    assert (paused.status, await paused.json()) == (200, {"batch_id": "b6", "paused": True})
    assert (await batches.status("b6")).paused
    scope = await dashboard.post("/api/limits/openai%2Fsim-model/pause", headers=AUTH)
    assert (await scope.json())["scope"] == "openai/sim-model"
    reading = await (await dashboard.get("/api/snapshot")).json()
    assert reading["paused_scopes"] == ["openai/sim-model"]
    assert [b["state"] for b in reading["batches"] if b["batch_id"] == "b6"] == ["paused"]
    assert (await dashboard.post("/api/batches/b6/resume")).status == 403
    resumed = await dashboard.post("/api/batches/b6/resume", headers=AUTH)
    assert await resumed.json() == {"batch_id": "b6", "paused": False, "queued": 3}
    assert not (await batches.status("b6")).paused
    assert (await dashboard.post("/api/limits/openai%2Fsim-model/resume", headers=AUTH)).status == 200
    assert await batches.pauses.paused_scopes() == {}
    for action in ("pause", "resume"):
        assert (await dashboard.post(f"/api/batches/nope/{action}", headers=AUTH)).status == 404
