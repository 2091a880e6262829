"""The simulated provider in a process of its own, for tests and benchmarks that measure timing.

Served from the measuring process, the provider shares its event loop with the producer, and that
loop's delays would show up as bursts the workers never sent.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import httpx

from llmqueue.errors import LLMQueueError
from llmqueue.ops.processes import stop_processes
from llmqueue.simulator.server import ProviderConfig

_LISTENING = re.compile(r"listening on (?P<url>http://\S+)")


class ProviderProcess:
    """``with ProviderProcess(config) as provider:`` serves ``config`` at ``provider.base_url``."""

    def __init__(self, config: ProviderConfig, *, host: str = "127.0.0.1") -> None:
        self.config = config
        self.host = host
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ProviderProcess:
        args = [sys.executable, "-m", "llmqueue", "simulate-provider", "--host", self.host, "--port", "0"]
        for name, value in self.config.model_dump(exclude_defaults=True).items():
            flag = "--" + name.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        match = _LISTENING.search(line)
        if match is None:
            self.stop()
            raise LLMQueueError(f"simulated provider did not start: {line!r}")
        self.base_url = match["url"]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process is not None:
            stop_processes([self._process], timeout=10)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the provider's process (SIGSTOP) for the block, as a provider that stalls: calls in
        flight get no answer and new ones hang too; it goes on (SIGCONT) afterwards."""
        if self._process is None:
            raise LLMQueueError("the simulated provider is not started")
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def stats(self, *, counts_only: bool = False) -> dict[str, Any]:
        """The provider's counters (``ProviderStats.to_json``); ``counts_only``: without the lists that
        grow with every call."""
        query = "?counts_only=1" if counts_only else ""
        response = httpx.get(self._root() + "/stats" + query, timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def control(self, action: str, **fields: Any) -> None:
        """Script the provider: ``fail_next`` (count, status, retry_after), ``rate_limit_for``,
        ``share_key`` (share), ``reset``."""
        response = httpx.post(self._root() + "/control", json={"action": action, **fields}, timeout=10)
        response.raise_for_status()

    def _root(self) -> str:
        return self.base_url.removesuffix("/v1")
