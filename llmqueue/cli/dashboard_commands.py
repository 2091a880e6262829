"""``llmqueue dashboard``: the live web page over batches, limits and workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Annotated

import typer

from llmqueue.cli.common import ConfigOption, RedisOption, app, console, settings_from
from llmqueue.errors import LLMQueueError


@app.command()
def dashboard(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one).")] = 8787,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to listen on; beyond loopback only with LLMQUEUE_DASHBOARD_TOKEN set."
        ),
    ] = "127.0.0.1",
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.2, help="Seconds between readings of Redis (shared by pages)."),
    ] = 1.0,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """A web page that follows batches, limits and workers live, and can cancel or retry a batch.

    Actions need the token printed at start (or LLMQUEUE_DASHBOARD_TOKEN). Without that variable, the
    page and its JSON API (/api/...) answer only on this machine's loopback; with it, every /api read
    needs the token too (Authorization: Bearer <token>).
    """
    from llmqueue.batches.control import Batches
    from llmqueue.dashboard import Access, create_app, serve
    from llmqueue.dashboard.access import TOKEN_ENV, is_loopback_host
    from llmqueue.producer import Producer

    access = Access.from_token(os.environ.get(TOKEN_ENV))
    if not access.reads_need_token and not is_loopback_host(host):
        raise LLMQueueError(f"--host {host} serves beyond this machine: set {TOKEN_ENV} to a secret first")
    settings = settings_from(config, redis_url)

    def ready(bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/"
        if access.reads_need_token:
            console.print(f"dashboard on {url} (token: ${TOKEN_ENV})", highlight=False)
        else:
            console.print(f"dashboard on {url}#token={access.token}", highlight=False)
            console.print(f"token for actions and the API: {access.token}", highlight=False)

    async def go() -> None:
        async with Producer(settings) as producer:
            batches = Batches(producer.store, producer.settings)
            await serve(
                create_app(batches, producer.settings, access, interval=interval), host, port, ready=ready
            )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
