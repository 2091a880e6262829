"""A simulated LLM provider: a local OpenAI-compatible HTTP server with rate limits and faults.

For tests, benchmarks and a demo that needs no API key. It answers ``POST /v1/chat/completions`` and
``POST /v1/embeddings`` (also without ``/v1``) in OpenAI's shapes with deterministic content, and
``GET /v1/models``, ``GET /health``, ``GET /stats`` (the counters of ``ProviderStats``, in
:mod:`~llmqueue.simulator.stats`) and ``POST /control`` (scripted faults, see ``ControlCommand`` in
:mod:`~llmqueue.simulator.control`). Its settings are ``ProviderConfig`` (:mod:`~llmqueue.simulator.config`),
the Batch API's endpoints are :mod:`~llmqueue.simulator.batch_api`'s.

A chat or embedding call goes through, in order: the API key check (401), body validation (400), a
scripted fault from ``fail_next`` or ``rate_limit_for``, the rate limits (429 with ``retry-after``; a
refused call consumes nothing; a call charged more tokens than ``tpm`` is refused as OpenAI refuses it,
"Request too large … Limit …, Requested …", without ``retry-after``), then latency, and a random 5xx
(``error_rate``) or hang (``timeout_rate``) chosen with the seeded random generator. Admitted calls count
against the limits even when they then fail, as on hosted providers.

In-process::

    async with run_provider(ProviderConfig(rpm=60), port=0) as provider:
        litellm.acompletion(model="openai/sim-model", api_base=provider.base_url, api_key="x", ...)

From a shell: ``llmqueue simulate-provider --port 8900 --rpm 60 --tpm 100000 --latency 0.2``.
Request headers are never logged (the access log is off).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import math
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from llmqueue.simulator.batch_api import BatchApi
from llmqueue.simulator.config import ProviderConfig
from llmqueue.simulator.control import CONTROL, AnyCommand, BrokenNext, FailNext, RateLimitFor, ShareKey
from llmqueue.simulator.limits import RateLimits
from llmqueue.simulator.stats import Arrival, ProviderStats
from llmqueue.simulator.wire import (
    BROKEN_HEADER,
    BrokenShape,
    broken_response,
    chat_body,
    chat_usage,
    embedding_usage,
    embeddings_body,
    error_response,
    models_body,
    rate_limit_response,
    stream_chunks,
)

__all__ = [
    "Arrival",
    "BrokenNext",
    "ProviderConfig",
    "ProviderStats",
    "RunningProvider",
    "SimulatedProvider",
    "run_provider",
    "serve",
]

RANDOM_ERROR_STATUSES = (500, 502, 503)


class SimulatedProvider:
    """The provider's state and HTTP handlers; serve ``app()`` with ``run_provider`` or ``serve``.

    ``clock`` returns monotonic seconds (the event loop's clock when served by ``run_provider``).
    """

    def __init__(self, config: ProviderConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.batch_api = BatchApi(
            clock=clock,
            authorized=self._authorized,
            completion_tokens=config.completion_tokens,
            validating_seconds=config.batch_validating_seconds,
            in_progress_seconds=config.batch_in_progress_seconds,
        )
        self.reset()

    def fail_next(
        self, count: int, status: int, retry_after: float | None = None, message: str | None = None
    ) -> None:
        """Answer the next ``count`` chat/embedding calls with HTTP ``status`` (400-599) and ``message``;
        send ``retry-after`` (seconds) when given. Queued behind earlier ``fail_next`` calls.

        The body is OpenAI's, so LiteLLM classifies it as it would OpenAI's: a 400 whose message mentions
        the "maximum context length" becomes ``ContextWindowExceededError``, and a 401 is read as
        ``AuthenticationError`` only if its message keeps "Incorrect API key provided" (the default).
        """
        self.control(FailNext(count=count, status=status, retry_after=retry_after, message=message))

    def rate_limit_for(self, seconds: float, retry_after: float | None = None) -> None:
        """Answer 429 to every chat/embedding call for the next ``seconds``, with ``retry-after`` if given."""
        self.control(RateLimitFor(seconds=seconds, retry_after=retry_after))

    def broken_next(self, count: int, shape: BrokenShape) -> None:
        """Answer the next ``count`` calls 200 with a malformed body of ``shape`` (see ``BrokenNext``).
        Queued with ``fail_next`` faults, in the order they were asked for."""
        self.control(BrokenNext(count=count, shape=shape))

    def reset(self) -> None:
        """Clear scripted faults and counters, refill the rate-limit buckets and re-seed the randomness."""
        self.stats = ProviderStats()
        self._limits_by_model: dict[str, RateLimits] = {}
        self._share = self.config.other_client_share
        self._random = random.Random(self.config.seed)
        self._pending: deque[FailNext | BrokenNext] = deque()
        self._limited_until = -math.inf
        self._limited_retry_after: float | None = None

    def control(self, command: AnyCommand) -> None:
        """Apply a scripted-fault command (what ``POST /control`` does with its JSON body)."""
        if isinstance(command, FailNext | BrokenNext):
            if command.count > 0:
                self._pending.append(command)
        elif isinstance(command, RateLimitFor):
            self._limited_until = self._clock() + command.seconds
            self._limited_retry_after = command.retry_after
        elif isinstance(command, ShareKey):
            self._share = command.share
            for limits in self._limits_by_model.values():
                limits.share(command.share, self._clock())
        else:
            self.reset()

    def app(self) -> web.Application:
        """An aiohttp application serving this provider."""
        app = web.Application()
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._handle_chat)
            app.router.add_post(f"{prefix}/embeddings", self._handle_embeddings)
            app.router.add_get(f"{prefix}/models", self._handle_models)
        self.batch_api.register(app)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/stats", self._handle_stats)
        app.router.add_post("/control", self._handle_control)
        return app

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_call(request, "chat")

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_call(request, "embeddings")

    async def _handle_models(self, request: web.Request) -> web.Response:
        return web.json_response(models_body())

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        batches = {
            "batches_created": len(self.batch_api.batches),
            "batch_lines_answered": self.batch_api.lines_answered,
            "batches": self.batch_api.summary(),
        }
        counts_only = request.query.get("counts_only") == "1"
        return web.json_response({**self.stats.to_json(counts_only=counts_only), **batches})

    async def _handle_control(self, request: web.Request) -> web.Response:
        try:
            command = CONTROL.validate_json(await request.read())
        except ValidationError as exc:
            return error_response(400, f"invalid control command: {exc}")
        self.control(command)
        return web.json_response({"status": "ok"})

    async def _handle_call(
        self, request: web.Request, endpoint: Literal["chat", "embeddings"]
    ) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.request_times.append(self._clock())
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            response = await self._answer(request, endpoint)
        finally:
            stats.in_flight -= 1
        # Every answer names its request, as OpenAI's do (x-request-id).
        response.headers.setdefault("x-request-id", f"req_sim_{next(self._request_ids)}")
        if response.status == 200 and response.headers.get(BROKEN_HEADER):
            stats.broken += 1
        elif response.status == 200:
            stats.succeeded += 1
        else:
            stats.errors[response.status] = stats.errors.get(response.status, 0) + 1
            if response.status == 429:
                stats.rate_limited += 1
        return response

    async def _answer(
        self, request: web.Request, endpoint: Literal["chat", "embeddings"]
    ) -> web.StreamResponse:
        if not self._authorized(request):
            return error_response(401, "Incorrect API key provided.")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            usage = (
                chat_usage(body, self.config.completion_tokens)
                if endpoint == "chat"
                else embedding_usage(body)
            )
        except ValueError as exc:
            return error_response(400, str(exc))
        if endpoint == "chat" and "cache_control" in json.dumps(body.get("messages")):
            self.stats.cache_marked += 1
        if endpoint == "chat" and isinstance(body.get("response_format"), dict):
            self.stats.json_conversations.append(body["messages"])
        if self._pending:
            fault = self._pending[0]
            if isinstance(fault, BrokenNext) and fault.shape == "cut_stream" and body.get("stream"):
                self._scripted_failure(body)  # takes the fault off the queue
                payload = chat_body(body, usage, next(self._ids))
                return await self._stream(request, body, payload, {BROKEN_HEADER: "1"}, cut=True)
            return self._scripted_failure(body)
        now = self._clock()
        if now < self._limited_until:
            return error_response(
                429, "Rate limit reached (scripted).", retry_after=self._limited_retry_after
            )
        limits = self._limits_for(body.get("model"))
        rejection = limits.too_large(usage.charged_tokens) or limits.admit(
            usage.charged_tokens,
            now,
            input_tokens=usage.prompt_tokens,
            output_reserve=usage.completion_tokens if usage.max_tokens is None else usage.max_tokens,
            output_tokens=usage.completion_tokens,
        )
        if rejection is not None:
            return rate_limit_response(rejection, self._headers(limits, now), body.get("model"))
        self.stats.tokens_admitted += usage.charged_tokens
        headers = self._headers(limits, now)
        await asyncio.sleep(self._latency())
        fate = self._random.random()
        if fate < self.config.error_rate:
            return error_response(self._random.choice(RANDOM_ERROR_STATUSES), headers=headers)
        if fate < self.config.error_rate + self.config.timeout_rate:
            await asyncio.sleep(self.config.hang_seconds)
        self.stats.arrivals.append(Arrival(now, usage.prompt_tokens, usage.charged_tokens))
        call_id = next(self._ids)
        payload = chat_body(body, usage, call_id) if endpoint == "chat" else embeddings_body(body, usage)
        if endpoint == "chat" and body.get("stream"):
            return await self._stream(request, body, payload, headers)
        return web.json_response(payload, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        payload: dict[str, Any],
        headers: dict[str, str],
        *,
        cut: bool = False,
    ) -> web.StreamResponse:
        """Send ``payload`` as OpenAI streams it: server-sent ``chat.completion.chunk`` events, one word
        of the content each, ``stream_chunk_delay`` seconds apart, then the usage when asked, then
        ``[DONE]``."""
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        response.headers["x-request-id"] = f"req_sim_{next(self._request_ids)}"
        await response.prepare(request)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        chunks = stream_chunks(payload, include_usage=include_usage)
        for number, chunk in enumerate(chunks):
            if cut and number == len(chunks) // 2:
                assert request.transport is not None
                request.transport.close()  # mid-answer: no end of the chunked body, no [DONE]
                return response
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                self.stats.stream_chunk_times.append(self._clock())
            await asyncio.sleep(self.config.stream_chunk_delay)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _limits_for(self, model: Any) -> RateLimits:
        """What a call to ``model`` is charged to: its own with ``limits_per_model``, else the key's."""
        name = str(model) if self.config.limits_per_model else ""
        limits = self._limits_by_model.get(name)
        if limits is None:
            config, now = self.config, self._clock()
            limits = RateLimits(
                config.rpm, config.tpm, config.window_seconds, now, itpm=config.itpm, otpm=config.otpm
            )
            limits.share(self._share, now)
            self._limits_by_model[name] = limits
        return limits

    def _headers(self, limits: RateLimits, now: float) -> dict[str, str]:
        return limits.headers(now, self.config.rate_limit_headers, time.time())

    def _authorized(self, request: web.Request) -> bool:
        if self.config.api_key is None:
            return True
        expected = f"Bearer {self.config.api_key}".encode()
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)

    def _scripted_failure(self, body: dict[str, Any]) -> web.Response:
        fault = self._pending[0]
        if fault.count > 1:
            self._pending[0] = fault.model_copy(update={"count": fault.count - 1})
        else:
            self._pending.popleft()
        if isinstance(fault, BrokenNext):
            return broken_response(fault.shape, body, next(self._ids))
        return error_response(fault.status, fault.message, retry_after=fault.retry_after)

    def _latency(self) -> float:
        jitter = self.config.latency_jitter
        if self.config.latency == 0 or jitter == 0:
            return self.config.latency
        return self.config.latency * self._random.uniform(1 - jitter, 1 + jitter)


class RunningProvider:
    """A ``SimulatedProvider`` being served; point a client at ``base_url`` (ends in ``/v1``)."""

    def __init__(self, provider: SimulatedProvider, host: str, port: int) -> None:
        self.provider = provider
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{url_host}:{port}/v1"

    @property
    def stats(self) -> ProviderStats:
        """The provider's counters (replaced by a fresh object on ``reset()``)."""
        return self.provider.stats

    def fail_next(
        self, count: int, status: int, retry_after: float | None = None, message: str | None = None
    ) -> None:
        """See ``SimulatedProvider.fail_next``."""
        self.provider.fail_next(count, status, retry_after, message)

    def rate_limit_for(self, seconds: float, retry_after: float | None = None) -> None:
        """See ``SimulatedProvider.rate_limit_for``."""
        self.provider.rate_limit_for(seconds, retry_after)

    def broken_next(self, count: int, shape: BrokenShape) -> None:
        """See ``SimulatedProvider.broken_next``."""
        self.provider.broken_next(count, shape)

    def reset(self) -> None:
        """See ``SimulatedProvider.reset``."""
        self.provider.reset()


@asynccontextmanager
async def run_provider(
    config: ProviderConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[RunningProvider]:
    """Serve a simulated provider on ``host:port`` (0 picks a free port) for the ``async with`` block.

    ``clock`` defaults to the running event loop's clock. Calls still in progress (a hang) are
    cancelled on exit.
    """
    provider = SimulatedProvider(config or ProviderConfig(), clock=clock or asyncio.get_running_loop().time)
    runner = web.AppRunner(provider.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield RunningProvider(provider, host, bound_port)
    finally:
        await runner.cleanup()


def serve(config: ProviderConfig, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Serve a simulated provider until SIGINT or SIGTERM; print
    ``simulated provider listening on <base_url>`` (with the real port) once it accepts calls."""
    asyncio.run(_serve_until_stopped(config, host, port))


async def _serve_until_stopped(config: ProviderConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with run_provider(config, host, port) as running:
        print(f"simulated provider listening on {running.base_url}", flush=True)
        await stop.wait()
