"""The dashboard's aiohttp application: the page, its JSON API under ``/api``, and its event stream.

Reads: ``GET /api/snapshot`` (everything), ``/api/batches``, ``/api/batches/{id}``,
``/api/batches/{id}/failures``, ``/api/limits``, ``/api/workers``, ``/api/spend``, and
``GET /api/events``, a server-sent event stream of snapshots (one ``snapshot`` event per reading).
Actions: ``POST /api/batches/{id}/cancel``, ``/retry`` (its failed jobs), ``/pause`` and ``/resume``, and
``POST /api/limits/{scope}/pause`` and ``/resume``, which call what ``llmqueue cancel``, ``llmqueue retry
--failed``, ``llmqueue pause`` and ``llmqueue resume`` call. Who may do what: :mod:`.access`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web

from llmqueue.batches.control import Batches
from llmqueue.dashboard.access import Access, cross_site, is_loopback_address, is_loopback_host
from llmqueue.dashboard.hub import Hub
from llmqueue.dashboard.views import Sample, batch_view
from llmqueue.errors import BatchError
from llmqueue.settings import Settings

ACCESS = web.AppKey("access", Access)
HUB = web.AppKey("hub", Hub)
SETTINGS = web.AppKey("settings", Settings)
STATIC = resources.files("llmqueue.dashboard").joinpath("static")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Outcome = TypeVar("Outcome")


def _refused(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=403)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what :mod:`.access` does not allow, before any handler runs."""
    access = request.app[ACCESS]
    token = access.has_token(request.headers.get("Authorization"))
    if request.method not in ("GET", "HEAD"):
        headers = request.headers
        if cross_site(
            origin=headers.get("Origin"), fetch_site=headers.get("Sec-Fetch-Site"), host=request.host
        ):
            return _refused("cross-site request refused")
        if not token:
            return _refused("actions need the dashboard's token: Authorization: Bearer <token>")
        return await handler(request)
    if access.reads_need_token:
        if request.path.startswith("/api/") and not token:
            return _refused("reads need the dashboard's token: Authorization: Bearer <token>")
    elif not (is_loopback_address(request.remote) and is_loopback_host(request.host)):
        return _refused(
            "without LLMQUEUE_DASHBOARD_TOKEN the dashboard answers only on this machine's loopback"
        )
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda value: json.dumps(value, default=str))


def _not_found(exc: BatchError) -> web.Response:
    return web.json_response({"error": str(exc)}, status=404)


async def _batch_action(
    request: web.Request,
    call: Callable[[str], Awaitable[Outcome]],
    reply: Callable[[str, Outcome], dict[str, Any]],
) -> web.Response:
    """``call`` the URL's batch; ``reply(batch_id, outcome)`` as JSON, or 404 for a batch it does not know."""
    batch_id = request.match_info["batch_id"]
    try:
        outcome = await call(batch_id)
    except BatchError as exc:
        return _not_found(exc)
    return _json(reply(batch_id, outcome))


async def page(request: web.Request) -> web.Response:
    return web.Response(
        text=STATIC.joinpath("index.html").read_text(encoding="utf-8"), content_type="text/html"
    )


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css"}
    kind = next((t for ext, t in types.items() if name.endswith(ext)), None)
    source = STATIC.joinpath(name)
    if kind is None or "/" in name or not source.is_file():
        raise web.HTTPNotFound()
    return web.Response(text=source.read_text(encoding="utf-8"), content_type=kind)


async def snapshot(request: web.Request) -> web.Response:
    return _json(await request.app[HUB].snapshot())


def _part(name: str) -> Handler:
    async def read(request: web.Request) -> web.Response:
        reading = await request.app[HUB].snapshot()
        if "error" in reading:
            return web.json_response(reading, status=503)
        return _json(reading[name])

    return read


async def batch(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    try:
        status = await hub.batches.status(request.match_info["batch_id"])
    except BatchError as exc:
        return _not_found(exc)
    now = hub.clock()
    return _json(batch_view(status, [Sample(now, status.requests, status.tokens, status.finished, 0)]))


async def failures(request: web.Request) -> web.Response:
    try:
        groups = await request.app[HUB].failures(request.match_info["batch_id"])
    except BatchError as exc:
        return _not_found(exc)
    return _json(groups)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a ``snapshot`` event per reading, while the page is open."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    async with aclosing(request.app[HUB].watch()) as readings:
        try:
            async for reading in readings:
                data = json.dumps(reading, default=str)
                await response.write(f"event: snapshot\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
    return response


async def cancel(request: web.Request) -> web.Response:
    """``llmqueue cancel``: queued and retry-waiting jobs end as cancelled, running ones finish; a batch
    sent through the provider's Batch API has its provider batches cancelled too."""
    batch_id = request.match_info["batch_id"]
    batches = request.app[HUB].batches
    try:
        count = await batches.cancel(batch_id)
    except BatchError as exc:
        return _not_found(exc)
    from llmqueue.batches.batch_api import cancel_provider_batches  # imports LiteLLM

    provider = await cancel_provider_batches(batches, batch_id, request.app[SETTINGS].llm)
    return _json({"batch_id": batch_id, "cancelled": count, "provider_batches_cancelled": provider})


async def retry(request: web.Request) -> web.Response:
    """``llmqueue retry --failed``: the batch's failed jobs are queued again with a fresh retry budget."""
    return await _batch_action(
        request,
        request.app[HUB].batches.retry_failed,
        lambda batch_id, count: {"batch_id": batch_id, "requeued": count},
    )


async def pause_batch(request: web.Request) -> web.Response:
    """``llmqueue pause BATCH``: no call of the batch starts (those in flight finish) until resumed."""
    return await _batch_action(
        request,
        request.app[HUB].batches.pause,
        lambda batch_id, _: {"batch_id": batch_id, "paused": True},
    )


async def resume_batch(request: web.Request) -> web.Response:
    """``llmqueue resume BATCH``: the batch's queued jobs take their turn again now."""
    return await _batch_action(
        request,
        request.app[HUB].batches.resume,
        lambda batch_id, queued: {"batch_id": batch_id, "paused": False, "queued": queued},
    )


async def pause_scope(request: web.Request) -> web.Response:
    """``llmqueue pause --scope NAME``: no call to the scope starts until resumed, whatever job."""
    scope = request.match_info["scope"]
    await request.app[HUB].batches.pauses.pause_scope(scope)
    return _json({"scope": scope, "paused": True})


async def resume_scope(request: web.Request) -> web.Response:
    """``llmqueue resume --scope NAME``: the jobs it held start now."""
    scope = request.match_info["scope"]
    woken = await request.app[HUB].batches.pauses.resume_scope(scope)
    return _json({"scope": scope, "paused": False, "resumed": woken})


def create_app(
    batches: Batches, settings: Settings, access: Access, *, interval: float = 1.0
) -> web.Application:
    """The dashboard over ``batches``' Redis, reading it at most once per ``interval`` seconds."""
    app = web.Application(middlewares=[guard])
    deployments = {d.name: d.model_name for d in settings.model_list}
    hub = Hub(batches, interval=interval, deployments=deployments)
    app[ACCESS] = access
    app[HUB] = hub
    app[SETTINGS] = settings
    app.on_response_prepare.append(_security_headers)

    async def close_hub(_app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(close_hub)  # before open event streams are waited for
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/batches", _part("batches"))
    app.router.add_get("/api/batches/{batch_id}", batch)
    app.router.add_get("/api/batches/{batch_id}/failures", failures)
    app.router.add_get("/api/limits", _part("limits"))
    app.router.add_get("/api/workers", _part("workers"))
    app.router.add_get("/api/spend", _part("spend"))
    app.router.add_post("/api/batches/{batch_id}/cancel", cancel)
    app.router.add_post("/api/batches/{batch_id}/retry", retry)
    app.router.add_post("/api/batches/{batch_id}/pause", pause_batch)
    app.router.add_post("/api/batches/{batch_id}/resume", resume_batch)
    app.router.add_post("/api/limits/{scope}/pause", pause_scope)
    app.router.add_post("/api/limits/{scope}/resume", resume_scope)
    return app


async def serve(
    app: web.Application, host: str, port: int, *, ready: Callable[[int], None] | None = None
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``ready(port)`` once it listens (0: a free port)."""
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if ready is not None:
            ready(int(runner.addresses[0][1]))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
