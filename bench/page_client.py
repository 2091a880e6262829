"""A dashboard with a page open on it, for the benchmarks: ``OpenDashboard`` starts ``llmqueue
dashboard`` and ``python -m bench.page_client URL``, a process that asks of the server what an open
page asks, without a browser.

As the page does (``llmqueue/dashboard/static/app.js`` and ``api.js``), it loads the page and its
static files once, then holds ``/api/events``, decodes every snapshot, and reads
``/api/batches/{id}/failures`` for a batch with failed or cancelled jobs when their count differs from
what it last read, one read at a time and at most every ``FAILURES_EVERY`` seconds; a dropped stream
is opened again after ``RECONNECT_AFTER`` seconds. The token (``LLMQUEUE_DASHBOARD_TOKEN``) travels in
a header, as the page sends it.

It prints ``live`` at the first snapshot (or an error line and exits 1 if none comes within
``LIVE_WITHIN`` seconds); when its stdin closes it prints one JSON line of counts and ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from bench.harness import BenchError, child_env
from llmqueue.dashboard.access import TOKEN_ENV
from llmqueue.dashboard.server import STATIC
from llmqueue.ops.processes import die_with_parent, stop_processes

FAILURES_EVERY = 3.0
RECONNECT_AFTER = 1.0
LIVE_WITHIN = 60.0


@dataclass
class Counts:
    """What the page received and asked for."""

    snapshots: int = 0
    event_bytes: int = 0
    connections: int = 0
    page_requests: int = 0
    failure_reads: int = 0


@dataclass
class _Failures:
    total: int = -1
    asked_at: float = -1e18
    pending: bool = False


@dataclass
class Page:
    """One open page: its session, its counts, and what it knows of each batch's failures."""

    session: aiohttp.ClientSession
    counts: Counts = field(default_factory=Counts)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    failures: dict[str, _Failures] = field(default_factory=dict)
    _reads: set[asyncio.Task[None]] = field(default_factory=set)

    async def load(self) -> None:
        """The page and the files it loads."""
        paths = ["/"] + [f"/static/{f.name}" for f in STATIC.iterdir() if f.name.endswith((".js", ".css"))]
        for path in paths:
            async with self.session.get(path) as response:
                response.raise_for_status()
                await response.read()
            self.counts.page_requests += 1

    async def follow(self) -> None:
        """Hold the event stream, opening it again after a pause whenever it ends."""
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(
                    "/api/events", headers={"Accept": "text/event-stream"}
                ) as response:
                    response.raise_for_status()
                    self.counts.connections += 1
                    buffer = b""
                    async for chunk in response.content.iter_any():
                        buffer += chunk
                        *blocks, buffer = buffer.split(b"\n\n")
                        for block in blocks:
                            self._event(block)
            await asyncio.sleep(RECONNECT_AFTER)

    def _event(self, block: bytes) -> None:
        lines = block.decode().split("\n")
        data = "\n".join(line.removeprefix("data: ") for line in lines if line.startswith("data: "))
        if not data:
            return
        reading: dict[str, Any] = json.loads(data)
        self.counts.snapshots += 1
        self.counts.event_bytes += len(block)
        self.live.set()
        for batch in reading.get("batches", []):
            self._read_failures_if_changed(batch)

    def _read_failures_if_changed(self, batch: dict[str, Any]) -> None:
        count = batch["failed"] + batch["cancelled"]
        if not count:
            return
        known = self.failures.setdefault(batch["batch_id"], _Failures())
        if known.total != count and not known.pending and time.monotonic() - known.asked_at > FAILURES_EVERY:
            known.pending, known.asked_at = True, time.monotonic()
            task = asyncio.create_task(self._read_failures(batch["batch_id"], known))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _read_failures(self, batch_id: str, known: _Failures) -> None:
        try:
            async with self.session.get(f"/api/batches/{batch_id}/failures") as response:
                groups = await response.json()
            self.counts.failure_reads += 1
            if response.ok:
                known.total = sum(group["count"] for group in groups)
        except aiohttp.ClientError:
            pass  # the page ignores a failed read too, and asks again at the next snapshot
        finally:
            known.pending = False


async def open_page(url: str, token: str | None) -> Counts:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(base_url=url, headers=headers) as session:
        page = Page(session)
        await page.load()
        following = asyncio.create_task(page.follow())
        try:
            await asyncio.wait_for(page.live.wait(), LIVE_WITHIN)
        except TimeoutError:
            following.cancel()
            print(f"no snapshot from {url}/api/events within {LIVE_WITHIN:g} s", flush=True)
            raise SystemExit(1) from None
        print("live", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the measuring process closes our stdin
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        return page.counts


class OpenDashboard:
    """``llmqueue dashboard --redis-url URL --port 0`` with a token, and a page client following it.

    Entering starts both and returns once the page has had its first snapshot; leaving closes the page
    (what it received lands in ``counts``) and stops the dashboard. Both log to files in ``workdir``.
    """

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.counts = Counts()
        self._env = child_env(**{TOKEN_ENV: secrets.token_urlsafe(24), "COLUMNS": "200"})
        self._log = workdir / f"dashboard-{time.monotonic_ns()}.log"
        self._page_log = self._log.with_suffix(".page.log")
        self._workdir = workdir
        self._dashboard: subprocess.Popen[str] | None = None
        self._page: subprocess.Popen[str] | None = None

    def __enter__(self) -> OpenDashboard:
        try:
            command = ["llmqueue", "dashboard", "--redis-url", self.redis_url, "--port", "0"]
            self._dashboard = self._start(command, self._log, piped=False)
            url = self._address(self._dashboard)
            self._page = self._start(["bench.page_client", url], self._page_log, piped=True)
            self._expect("live")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        page, started = self._page, [p for p in (self._page, self._dashboard) if p is not None]
        try:
            if page is not None and page.poll() is None and page.stdin is not None:
                page.stdin.close()  # the page client's signal to finish
                self.counts = Counts(**json.loads(self._expect("{")))
        finally:
            stop_processes(started, timeout=15)

    @property
    def pids(self) -> dict[str, list[int]]:
        """The dashboard's process as ``dashboard``, the page client's as ``page``."""
        assert self._dashboard is not None and self._page is not None
        return {"dashboard": [self._dashboard.pid], "page": [self._page.pid]}

    def _start(self, module_args: list[str], log: Path, *, piped: bool) -> subprocess.Popen[str]:
        with log.open("w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", *module_args],
                env=self._env,
                cwd=self._workdir,
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=subprocess.PIPE if piped else out,
                stderr=out,
                text=True,
                preexec_fn=die_with_parent,
            )

    def _address(self, dashboard: subprocess.Popen[str]) -> str:
        deadline = time.monotonic() + LIVE_WITHIN
        while time.monotonic() < deadline and dashboard.poll() is None:
            found = re.search(r"dashboard on (http://\S+?)/", self._log.read_text(errors="replace"))
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise BenchError(f"the dashboard printed no address:\n{_tail(self._log)}")

    def _expect(self, prefix: str) -> str:
        assert self._page is not None and self._page.stdout is not None
        line = self._page.stdout.readline()
        if not line.startswith(prefix):
            raise BenchError(
                f"the page client said {line!r}:\n{_tail(self._page_log)}\ndashboard:\n{_tail(self._log)}"
            )
        return line


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.page_client", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the dashboard's address, e.g. http://127.0.0.1:8787")
    options = parser.parse_args(argv)
    counts = asyncio.run(open_page(options.url.rstrip("/"), os.environ.get(TOKEN_ENV)))
    print(json.dumps(asdict(counts)), flush=True)


if __name__ == "__main__":
    main()
