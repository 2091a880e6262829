"""The clients llmqueue is measured against, each run as a process of its own, and ``Clients``, which
starts and drives them from the measuring process.

``python -m bench.clients MODE --base-url URL --count N [--offset K] [--concurrency C] ...`` builds its
jobs (``bench.workloads``), prints ``ready`` and then, for every ``go`` line on stdin, sends the jobs
through ``C`` asyncio tasks and prints one JSON line of counts and clocks (``warm`` sends only the first
few, to get connections and lazy imports out of the way). Modes:

- ``tenacity``: ``litellm.acompletion`` under OpenHands' retry policy (tenacity ``wait_exponential(
  multiplier=2, min=5, max=30)``, 5 attempts: the first and ``num_retries=4`` more), no shared limiter.
- ``router``: ``litellm.Router`` with the limit's ``rpm``/``tpm`` on its one deployment,
  ``usage-based-routing-v2`` (the strategy that enforces them) and ``num_retries=4``.
- ``litellm``: bare ``litellm.acompletion`` calls, no retries: what a worker's provider call costs.
- ``http``: the same request as a raw aiohttp POST: what the HTTP round trip alone costs.

The OpenAI SDK's own retries are off in every mode (``max_retries=0``), as in llmqueue's workers, so
each mode's retry policy is the only one at work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import litellm
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from bench.harness import BenchError, child_env, process_cpu_seconds
from bench.workloads import API_KEY, MODEL, call_kwargs, jobs
from llmqueue.ops.processes import stop_processes

MODES = ("tenacity", "router", "litellm", "http")
# OpenHands' LLM_RETRY_EXCEPTIONS, in LiteLLM's names.
RETRYABLE = (
    litellm.APIConnectionError,
    litellm.RateLimitError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
    litellm.InternalServerError,
    litellm.Timeout,
)
ATTEMPTS = 5
WARM_UP_CALLS = 20

Call = Callable[[dict[str, Any]], Awaitable[Any]]


def tenacity_call() -> Call:
    @retry(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=2, min=5, max=30),
        retry=retry_if_exception_type(RETRYABLE),
        reraise=True,
    )
    async def call(kwargs: dict[str, Any]) -> Any:
        return await litellm.acompletion(**kwargs)

    return call


def router_call(base_url: str, rpm: float | None, tpm: float | None) -> Call:
    params: dict[str, Any] = {"model": MODEL, "api_base": base_url, "api_key": API_KEY, "max_retries": 0}
    if rpm is not None:
        params["rpm"] = int(rpm)
    if tpm is not None:
        params["tpm"] = int(tpm)
    router = litellm.Router(
        model_list=[{"model_name": "bench", "litellm_params": params}],
        routing_strategy="usage-based-routing-v2",
        num_retries=ATTEMPTS - 1,
    )

    async def call(kwargs: dict[str, Any]) -> Any:
        return await router.acompletion(model="bench", messages=kwargs["messages"], timeout=kwargs["timeout"])

    return call


def litellm_call() -> Call:
    async def call(kwargs: dict[str, Any]) -> Any:
        return await litellm.acompletion(**kwargs)

    return call


class HttpCall:
    """One aiohttp session POSTing the request body LiteLLM would send."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency)
            self.session = aiohttp.ClientSession(connector=connector)
        body = {"model": MODEL.split("/", 1)[1], "messages": kwargs["messages"]}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with self.session.post(self.url, json=body, headers=headers) as response:
            response.raise_for_status()
            return await response.json()


async def send_all(call: Call, requests: Sequence[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send every request through ``concurrency`` tasks; count outcomes and clocks."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for kwargs in requests:
        queue.put_nowait(kwargs)
    errors: Counter[str] = Counter()
    succeeded = 0

    async def work() -> None:
        nonlocal succeeded
        while not queue.empty():
            kwargs = queue.get_nowait()
            try:
                await call(kwargs)
            except Exception as exc:
                errors[type(exc).__name__] += 1
            else:
                succeeded += 1

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(work() for _ in range(concurrency)))
    return {
        "succeeded": succeeded,
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "seconds": time.monotonic() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }


async def serve(call: Call, requests: list[dict[str, Any]], concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "go":
            summary = await send_all(call, requests, concurrency)
        elif command == "warm":
            summary = await send_all(call, requests[:WARM_UP_CALLS], min(concurrency, WARM_UP_CALLS))
        else:
            return
        print(json.dumps(summary), flush=True)


@dataclass
class ClientRun:
    """One ``go`` of a group of client processes: the children's summed counts and the wall time."""

    seconds: float
    succeeded: int
    failed: int
    errors: dict[str, int]
    cpu_seconds: float


class Clients:
    """``processes`` copies of ``python -m bench.clients MODE ...`` sharing out ``count`` jobs.

    Entering starts them and waits until each has imported and built its requests; ``run()`` then
    sets them all going at once.
    """

    def __init__(
        self, mode: str, base_url: str, *, count: int, processes: int = 1, workdir: Path, **options: Any
    ) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[str]] = []
        self._logs: dict[int, Path] = {}
        self._commands: list[list[str]] = []
        share, extra = divmod(count, processes)
        offset = 0
        for index in range(processes):
            size = share + (1 if index < extra else 0)
            args = [sys.executable, "-m", "bench.clients", mode, "--base-url", base_url]
            args += ["--count", str(size), "--offset", str(offset)]
            for name, value in options.items():
                if value is not None:
                    args += ["--" + name.replace("_", "-"), str(value)]
            self._commands.append(args)
            offset += size

    def __enter__(self) -> Clients:
        try:
            for args in self._commands:
                log_path = self.workdir / f"client-{args[3]}-{time.monotonic_ns()}.log"
                with log_path.open("wb") as log:
                    process = subprocess.Popen(
                        args,
                        env=child_env(),
                        cwd=self.workdir,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                self._logs[process.pid] = log_path
                self.processes.append(process)
            for process in self.processes:
                self._expect(process, "ready")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()  # the client's signal to finish
        stop_processes(self.processes, timeout=15, stop_signal=None)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def run(self, *, warm_up: bool = False) -> ClientRun:
        """Send ``go`` (or ``warm``: a few calls only) to every process and wait for their summaries."""
        cpu = sum(process_cpu_seconds(process.pid) for process in self.processes)
        started = time.monotonic()
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("warm\n" if warm_up else "go\n")
            process.stdin.flush()
        summaries = [json.loads(self._expect(process, "{")) for process in self.processes]
        seconds = time.monotonic() - started
        errors: dict[str, int] = {}
        for summary in summaries:
            for name, count in summary["errors"].items():
                errors[name] = errors.get(name, 0) + count
        return ClientRun(
            seconds=seconds,
            succeeded=sum(s["succeeded"] for s in summaries),
            failed=sum(s["failed"] for s in summaries),
            errors=errors,
            cpu_seconds=sum(process_cpu_seconds(process.pid) for process in self.processes) - cpu,
        )

    def _expect(self, process: subprocess.Popen[str], prefix: str) -> str:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(prefix):
            log = self._logs[process.pid].read_text(errors="replace")
            raise BenchError(f"client {process.args!r} said {line!r}:\n{log[-3000:]}")
        return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--workload", choices=("chat", "long"), default="chat")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--tpm", type=float)
    options = parser.parse_args(argv)
    litellm.suppress_debug_info = True
    requests = [
        call_kwargs(job, options.base_url) for job in jobs(options.workload, options.count, options.offset)
    ]
    call: Call
    if options.mode == "tenacity":
        call = tenacity_call()
    elif options.mode == "router":
        call = router_call(options.base_url, options.rpm, options.tpm)
    elif options.mode == "litellm":
        call = litellm_call()
    else:
        call = HttpCall(options.base_url, options.concurrency)
    asyncio.run(serve(call, requests, options.concurrency))


if __name__ == "__main__":
    main()
