"""A simulated LLM provider: a local OpenAI-compatible HTTP server with rate limits and faults.

For tests, benchmarks and a demo that needs no API key. It answers ``POST /v1/chat/completions`` and
``POST /v1/embeddings`` (also without ``/v1``) in OpenAI's shapes with deterministic content, and
``GET /v1/models``, ``GET /health``, ``GET /stats`` (the counters of ``ProviderStats``) and
``POST /control`` (scripted faults, see ``ControlCommand``).

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
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Self

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from llmqueue.simulator.batch_api import BatchApi
from llmqueue.simulator.limits import HeaderFamily, RateLimits
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


class ProviderConfig(BaseModel):
    """How the simulated provider behaves; negative values are rejected.

    - ``rpm``, ``tpm``: requests and tokens per minute, ``None`` for unlimited; enforced as buckets of
      ``rate * window_seconds / 60`` that start full (see ``llmqueue.simulator.limits``). ``itpm``,
      ``otpm``: input and output tokens per minute, as Anthropic limits them: a call needs its prompt
      in the input bucket and its ``max_tokens`` in the output bucket, which is charged what the answer
      produced; Anthropic's ``tokens`` headers state whichever of the two has fewer tokens left.
    - ``latency``: mean seconds before an admitted call is answered, uniform in
      ``latency * (1 ± latency_jitter)``.
    - ``error_rate``: fraction of admitted calls answered 500, 502 or 503; ``timeout_rate``: fraction that
      hang ``hang_seconds`` before answering. Both drawn from ``random.Random(seed)``.
    - ``api_key``: when set, calls must send ``Authorization: Bearer <api_key>`` or get 401.
    - ``completion_tokens``: completion length of every chat answer, capped by the request's ``max_tokens``.
    - ``stream_chunk_delay``: seconds between the chunks of a streamed answer (``stream: true``: server-sent
      events in OpenAI's ``chat.completion.chunk`` shape, one word a chunk).
    - ``batch_validating_seconds``, ``batch_in_progress_seconds``: how long a Batch API batch spends in
      each state before it completes (``llmqueue.simulator.batch_api``).
      A chat call is charged its prompt's characters/4 plus ``max_tokens`` when it sets one (as OpenAI's
      limiter counts), else plus its completion.
    - ``rate_limit_headers``: the rate-limit headers every answer carries, OpenAI's (``x-ratelimit-*``),
      Anthropic's (``anthropic-ratelimit-*``) or none.
    - ``other_client_share``: the key is also used by another client, which takes this fraction of both
      limits (the headers still state the whole key's limits, and what is left of them).
    - ``limits_per_model``: each model the calls name has limits of its own, as OpenAI's keys have (a chat
      model and an embedding model do not share buckets); by default all models share one set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    itpm: float | None = Field(default=None, gt=0)
    otpm: float | None = Field(default=None, gt=0)
    window_seconds: float = Field(default=1.0, gt=0)
    latency: float = Field(default=0.0, ge=0)
    latency_jitter: float = Field(default=0.0, ge=0, le=1)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    hang_seconds: float = Field(default=30.0, ge=0)
    api_key: str | None = Field(default=None, repr=False)
    seed: int | None = None
    completion_tokens: int = Field(default=16, ge=0)
    stream_chunk_delay: float = Field(default=0.02, ge=0)
    batch_validating_seconds: float = Field(default=0.1, ge=0)
    batch_in_progress_seconds: float = Field(default=0.3, ge=0)
    rate_limit_headers: HeaderFamily = "openai"
    other_client_share: float = Field(default=0.0, ge=0, lt=1)
    limits_per_model: bool = False

    @model_validator(mode="after")
    def _fractions_fit(self) -> Self:
        if self.error_rate + self.timeout_rate > 1:
            raise ValueError("error_rate + timeout_rate must not exceed 1")
        return self


class FailNext(BaseModel):
    """Answer the next ``count`` chat/embedding calls with ``status`` (and ``retry-after``, if given)."""

    action: Literal["fail_next"] = "fail_next"
    count: int = Field(default=1, ge=0)
    status: int = Field(ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    message: str | None = None


class RateLimitFor(BaseModel):
    """Answer 429 to every chat/embedding call for ``seconds`` (with ``retry-after``, if given)."""

    action: Literal["rate_limit_for"] = "rate_limit_for"
    seconds: float = Field(ge=0)
    retry_after: float | None = Field(default=None, ge=0)


class ShareKey(BaseModel):
    """From now on another client on the key takes ``share`` of both limits (0 stops it)."""

    action: Literal["share_key"] = "share_key"
    share: float = Field(ge=0, lt=1)


class BrokenNext(BaseModel):
    """Answer the next ``count`` chat/embedding calls with HTTP 200 and a malformed body of ``shape``.

    Shapes (see ``llmqueue.simulator.wire.broken_body``): ``empty_choices`` (``choices: []``),
    ``no_choices`` (the key left out), ``no_message`` (a choice without ``message``), ``truncated`` (JSON
    cut off half-way), ``html`` (a proxy's error page), ``empty`` (no body at all), and ``lone_surrogate``: a
    well-formed answer whose text holds ``\\ud800``, valid JSON that UTF-8 cannot encode; ``cut_stream``: a
    streamed call gets half its chunks, then the connection is dropped. These calls skip
    the rate limits and are counted in ``stats.broken``, not ``succeeded``.
    """

    action: Literal["broken_next"] = "broken_next"
    count: int = Field(default=1, ge=0)
    shape: BrokenShape


class Reset(BaseModel):
    """Clear scripted faults, counters and rate-limit buckets."""

    action: Literal["reset"] = "reset"


AnyCommand = FailNext | BrokenNext | RateLimitFor | ShareKey | Reset
ControlCommand = Annotated[AnyCommand, Field(discriminator="action")]
_CONTROL: TypeAdapter[AnyCommand] = TypeAdapter(ControlCommand)


@dataclass(frozen=True)
class Arrival:
    """A successful call: when it was admitted (seconds, provider clock) and the tokens it was charged."""

    time: float
    prompt_tokens: int
    total_tokens: int


@dataclass
class ProviderStats:
    """Counters of chat/embedding calls since start or ``reset()``.

    ``errors`` counts every non-200 answer by status, 429s included; ``broken`` the 200s sent with a
    malformed body (``BrokenNext``), which ``succeeded`` does not count; ``tokens_admitted`` sums the tokens
    charged to admitted calls; ``arrivals`` lists successful calls in completion order, and
    ``request_times`` the arrival time of every call, refused ones included.
    """

    requests: int = 0
    succeeded: int = 0
    rate_limited: int = 0
    broken: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    tokens_admitted: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cache_marked: int = 0
    """Chat calls whose messages carried a prompt-caching mark (``cache_control``)."""
    stream_chunk_times: list[float] = field(default_factory=list)
    """When each chunk carrying content of a streamed answer was written (the provider's clock)."""
    json_conversations: list[list[dict[str, Any]]] = field(default_factory=list)
    """The messages of each chat call that asked for JSON (``response_format``), as received."""

    def to_json(self) -> dict[str, Any]:
        """The counters as JSON-ready data (``errors`` keyed by status as a string)."""
        data = asdict(self)
        data["errors"] = {str(status): count for status, count in self.errors.items()}
        return data


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
        }
        return web.json_response({**self.stats.to_json(), **batches})

    async def _handle_control(self, request: web.Request) -> web.Response:
        try:
            command = _CONTROL.validate_json(await request.read())
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
