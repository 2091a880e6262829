"""The Batch API tier (``llmqueue run FILE --via batch-api``): the provider's own batches, at its batch price.

The lines the response cache cannot answer are grouped by model (a provider batch holds one model),
split into files within the provider's limits, uploaded, and sent as provider batches through LiteLLM
(``acreate_file``, ``acreate_batch``, ``aretrieve_batch``, ``afile_content``). Their outputs become
results like the workers' (``via = "batch-api"``, the Batch API price as cost; a line the cache answers
is marked as in a live run: ``cached``, cost 0) in the same Redis batch, so ``status``, ``results`` and
the output file work as for live runs. Lines that expired, or failed in
a way another try may fix (5xx, 429), go out again in a new round, at most ``num_retries`` more (or, with
``fallback_live``, to the workers as live calls); a line the provider refused (a 4xx) fails. Provider
batch ids are kept in Redis (``keys.batch_api``) as soon as they exist, so an interrupted run resumes by
collecting them rather than sending the lines again.

Only OpenAI-compatible endpoints (``openai/...`` models, ``custom_llm_provider="openai"``) are supported.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import litellm
from litellm.cost_calculator import batch_cost_calculator
from litellm.types.utils import Usage as LiteLLMUsage

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.cache import ResponseCache, job_cache_key
from llmqueue.errors import BatchError, ConfigError
from llmqueue.limits.tokens import estimate_tokens
from llmqueue.llm import litellm_defaults
from llmqueue.llm.request import call_kwargs, job_model
from llmqueue.models import AttemptError, Job, JobResult, ResultStatus, Timings, Usage
from llmqueue.settings import LLMConfig, Settings

litellm_defaults.apply()

ENDPOINTS = {"chat": "/v1/chat/completions", "embedding": "/v1/embeddings"}
MAX_LINES = 50_000
MAX_BYTES = 200 * 1024 * 1024
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})
RETRYABLE_CODES = frozenset({"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded"})
_TRANSPORT = frozenset(
    {"model", "timeout", "num_retries", "max_retries", "api_key", "api_base", "api_version", "drop_params"}
)


@dataclass(frozen=True)
class FileLimits:
    """What one provider batch file may hold (OpenAI: 50,000 requests, 200 MB), and ``max_tokens``: the
    provider's enqueued-token limit per model (None: not checked). With it, files are cut to hold at most
    that many tokens (prompt plus the completion allowed, as the limiter counts them), and a model's next
    file is sent only once its batches in flight leave room for it."""

    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    max_tokens: int | None = None


@dataclass
class _Line:
    job: Job
    model: str
    provider_model: str
    request: bytes
    cache_key: str | None
    tokens: int = 0
    """Estimated tokens (counted only when the file limits include ``max_tokens``)."""


@dataclass
class _Chunk:
    """The lines of one provider batch file."""

    model: str
    kind: str
    number: int
    lines: list[_Line]

    @property
    def tokens(self) -> int:
        return sum(line.tokens for line in self.lines)


Progress = Callable[[int, int], None]
"""Called with (lines answered by the provider so far, lines sent) while batches run."""


class BatchApiRun:
    """Send a registered batch's jobs through the provider's Batch API and store their results."""

    def __init__(
        self,
        batches: Batches,
        settings: Settings,
        *,
        cache: ResponseCache | None,
        poll_interval: float = 5.0,
        limits: FileLimits | None = None,
        on_progress: Progress | None = None,
        fallback_live: bool = False,
    ) -> None:
        self.batches = batches
        self.store = batches.store
        self.redis = batches.redis
        self.settings = settings
        self.cache = cache
        self.poll_interval = poll_interval
        self.limits = limits or FileLimits()
        self.on_progress = on_progress
        self.fallback_live = fallback_live
        """Lines a provider batch leaves unanswered go to the live queue (workers) instead of a new batch."""

    async def run(self, batch_id: str, jobs: Sequence[Job], llm_config: str | None) -> None:
        """Answer every job of ``batch_id`` that has no result yet; returns when each has one."""
        llm = self.settings.llm_for(llm_config)
        by_id = {job.id: job for job in jobs}
        await self._collect_recorded(batch_id, by_id, llm)
        for round_number in range(llm.num_retries + 1):
            lines = await self._pending_lines(batch_id, jobs, llm)
            if not lines:
                return
            if await self._cancel_requested(batch_id):
                await self._finish_all(lines, "cancelled", "cancelled", "the batch was cancelled")
                return
            if round_number > 0 and self.fallback_live:
                await self.store.enqueue([line.job for line in lines])
                await self.batches.wait(batch_id, interval=min(self.poll_interval, 1.0))
                return
            await self._send_and_collect(batch_id, lines, llm, round_number, by_id)
        lines = await self._pending_lines(batch_id, jobs, llm)
        await self._finish_all(
            lines, "failed", "batch_expired", f"no answer after {llm.num_retries + 1} provider batch(es)"
        )

    async def _pending_lines(self, batch_id: str, jobs: Sequence[Job], llm: LLMConfig) -> list[_Line]:
        """The jobs without a result, as request lines; cache hits are stored as results on the way."""
        results = await self.store.get_results([job.id for job in jobs])
        lines = []
        for job, result in zip(jobs, results, strict=True):
            if result is not None:
                continue
            line = _line(job, llm)
            if self.cache is not None and job.cache:
                line.cache_key = job_cache_key(job, llm)
                hit = await self.cache.backend.get(line.cache_key)
                if hit is not None:
                    await self._finish_cached(job, line.model, hit)
                    continue
            if self.limits.max_tokens is not None:
                line.tokens = estimate_tokens(job, line.model, llm.default_completion_tokens)
            lines.append(line)
        return lines

    async def _send_and_collect(
        self, batch_id: str, lines: list[_Line], llm: LLMConfig, round_number: int, by_id: dict[str, Job]
    ) -> None:
        """Send ``lines`` as provider batches (one model and kind each, cut to the file limits) and store
        their answers; with ``max_tokens``, a model's next file waits until its batches leave room."""
        groups: dict[tuple[str, str], list[_Line]] = {}
        for line in lines:
            groups.setdefault((line.provider_model, line.job.kind), []).append(line)
        pending = [
            _Chunk(model, kind, number, chunk)
            for (model, kind), group in groups.items()
            for number, chunk in enumerate(split_lines(group, self.limits))
        ]
        waiting: dict[str, _Chunk] = {}
        progress: dict[str, int] = {}
        sent = len(lines)
        while pending or waiting:
            still = []
            for chunk in pending:
                if self._fits(chunk, waiting.values()):
                    waiting[await self._create(batch_id, chunk, llm, round_number)] = chunk
                else:
                    still.append(chunk)
            pending = still
            await self._poll(batch_id, waiting, progress, by_id, llm)
            if self.on_progress is not None:
                self.on_progress(sum(progress.values()), sent)
            if waiting:
                await asyncio.sleep(self.poll_interval)

    def _fits(self, chunk: _Chunk, in_flight: Iterable[_Chunk]) -> bool:
        limit = self.limits.max_tokens
        used = sum(other.tokens for other in in_flight if other.model == chunk.model)
        return limit is None or used == 0 or used + chunk.tokens <= limit

    async def _create(self, batch_id: str, chunk: _Chunk, llm: LLMConfig, round_number: int) -> str:
        """Upload one file and create its provider batch; its id is kept in Redis at once."""
        content = b"".join(line.request for line in chunk.lines)
        name = f"{batch_id}-r{round_number}-{chunk.model.replace('/', '_')}-{chunk.number}.jsonl"
        uploaded = await litellm.acreate_file(file=(name, content), purpose="batch", **_access(llm))
        created = await litellm.acreate_batch(
            completion_window="24h",
            endpoint=ENDPOINTS[chunk.kind],
            input_file_id=uploaded.id,
            metadata={"llmqueue_batch": batch_id},
            **_access(llm),
        )
        state = {"model": chunk.model, "round": round_number, "lines": len(chunk.lines), "collected": False}
        await self.redis.hset(keys.batch_api(batch_id), created.id, json.dumps(state))
        return str(created.id)

    async def _collect_recorded(self, batch_id: str, by_id: dict[str, Job], llm: LLMConfig) -> None:
        """On resume: wait for the provider batches an interrupted run created, and store their answers."""
        recorded = await self.redis.hgetall(keys.batch_api(batch_id))
        waiting = {
            key.decode(): _Chunk(json.loads(raw)["model"], "chat", 0, [])
            for key, raw in recorded.items()
            if not json.loads(raw)["collected"]
        }
        progress: dict[str, int] = {}
        while waiting:
            await self._poll(batch_id, waiting, progress, by_id, llm)
            if waiting:
                await asyncio.sleep(self.poll_interval)

    async def _poll(
        self,
        batch_id: str,
        waiting: dict[str, _Chunk],
        progress: dict[str, int],
        by_id: dict[str, Job],
        llm: LLMConfig,
    ) -> None:
        """Look at each waiting provider batch once; store and forget the ones that ended."""
        for provider_id in list(waiting):
            batch = await litellm.aretrieve_batch(batch_id=provider_id, **_access(llm))
            counts = batch.request_counts
            progress[provider_id] = (counts.completed + counts.failed) if counts else 0
            if batch.status in TERMINAL:
                await self._store_outputs(batch, by_id, llm)
                state = json.loads(await self.redis.hget(keys.batch_api(batch_id), provider_id) or "{}")
                await self.redis.hset(
                    keys.batch_api(batch_id), provider_id, json.dumps({**state, "collected": True})
                )
                del waiting[provider_id]

    async def _store_outputs(self, batch: Any, by_id: dict[str, Job], llm: LLMConfig) -> None:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await litellm.afile_content(file_id=file_id, **_access(llm))
            for raw in content.content.decode("utf-8").splitlines():
                if raw.strip():
                    await self._store_line(json.loads(raw), by_id, llm)

    async def _store_line(self, entry: dict[str, Any], by_id: dict[str, Job], llm: LLMConfig) -> None:
        job = by_id.get(str(entry.get("custom_id")))
        if job is None:
            return
        response = entry.get("response") or {}
        error = entry.get("error") or {}
        status_code = response.get("status_code")
        model = job_model(job, llm)
        if status_code == 200:
            body = response.get("body") or {}
            usage = _usage(body)
            result = _result(job, model, "succeeded", attempts=1)
            result.response, result.usage, result.cost = body, usage, _batch_price(model, usage)
            result.request_id = response.get("request_id")
            if self.cache is not None and job.cache:
                await self.cache.store(job_cache_key(job, llm), body)
            await self.store.finish(result)
            return
        code = str(error.get("code") or "provider_error")
        if code in RETRYABLE_CODES or (
            isinstance(status_code, int) and (status_code >= 500 or status_code == 429)
        ):
            return  # no result: the next round sends the line again
        failure = AttemptError(
            attempt=1, kind="bad_request" if status_code == 400 else code,
            message=str(error.get("message") or "the provider refused the line"), status_code=status_code,
        )  # fmt: skip
        result = _result(job, model, "failed", attempts=1, errors=[failure])
        result.error_body, result.request_id = response.get("body"), response.get("request_id")
        result.request = job.model_dump(mode="json", exclude={"reply_to"})
        await self.store.finish(result)

    async def _finish_cached(self, job: Job, model: str, response: dict[str, Any]) -> None:
        # Marked as a live run marks its cache's answers: no provider call, so not the Batch API's price.
        await self.store.finish(JobResult.from_cache(job, model, response))

    async def _finish_all(self, lines: list[_Line], status: ResultStatus, kind: str, message: str) -> None:
        for line in lines:
            result = _result(
                line.job, line.model, status, attempts=0,
                errors=[AttemptError(attempt=0, kind=kind, message=message)],
            )  # fmt: skip
            result.request = line.job.model_dump(mode="json", exclude={"reply_to"})
            await self.store.finish(result)

    async def _cancel_requested(self, batch_id: str) -> bool:
        return bool(await self.redis.hget(keys.batch(batch_id), "cancel_requested"))


async def cancel_provider_batches(batches: Batches, batch_id: str, llm: LLMConfig) -> int:
    """Cancel the provider batches of ``batch_id`` not collected yet; returns how many were asked to stop."""
    recorded = await batches.redis.hgetall(keys.batch_api(batch_id))
    count = 0
    for key, raw in recorded.items():
        if not json.loads(raw)["collected"]:
            await litellm.acancel_batch(batch_id=key.decode(), **_access(llm))
            count += 1
    return count


def split_lines(lines: list[_Line], limits: FileLimits) -> list[list[_Line]]:
    """``lines`` in order, cut into files of at most ``max_lines`` lines, ``max_bytes`` bytes and (when
    set) ``max_tokens`` tokens; a line above ``max_tokens`` alone goes in a file of its own."""
    chunks: list[list[_Line]] = []
    current: list[_Line] = []
    size = tokens = 0
    max_tokens = limits.max_tokens
    for line in lines:
        if len(line.request) > limits.max_bytes:
            raise BatchError(f"line {line.job.metadata.get('line')} alone exceeds the provider's file size")
        full = len(current) >= limits.max_lines or size + len(line.request) > limits.max_bytes
        if current and (full or (max_tokens is not None and tokens + line.tokens > max_tokens)):
            chunks.append(current)
            current, size, tokens = [], 0, 0
        current.append(line)
        size += len(line.request)
        tokens += line.tokens
    if current:
        chunks.append(current)
    return chunks


def check_supported(jobs: Sequence[Job], llm: LLMConfig) -> None:
    """Refuse, before anything is uploaded, models whose provider the tier cannot reach."""
    for job in jobs:
        model = job_model(job, llm)
        _, provider, _, _ = litellm.get_llm_provider(model)
        if provider != "openai":
            raise ConfigError(
                f"line {job.metadata.get('line')}: model {model!r} is served by {provider!r}; the Batch API "
                "tier supports OpenAI-compatible endpoints (openai/... models) only: run it live instead"
            )


def _line(job: Job, llm: LLMConfig) -> _Line:
    model = job_model(job, llm)
    provider_model, _, _, _ = litellm.get_llm_provider(model)
    # No prompt-caching marks: the Batch API gets the body as it is, not LiteLLM's translation of it.
    kwargs = call_kwargs(job, llm, supports_caching=None)
    body = {"model": provider_model, **{k: v for k, v in kwargs.items() if k not in _TRANSPORT}}
    request = {"custom_id": job.id, "method": "POST", "url": ENDPOINTS[job.kind], "body": body}
    encoded = (json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    return _Line(job=job, model=model, provider_model=provider_model, request=encoded, cache_key=None)


def _access(llm: LLMConfig) -> dict[str, Any]:
    access: dict[str, Any] = {"custom_llm_provider": "openai", "max_retries": 2}
    if llm.base_url:
        access["api_base"] = llm.base_url
    if llm.api_key is not None:
        access["api_key"] = llm.api_key.get_secret_value()
    return access


def _result(
    job: Job, model: str, status: str, *, attempts: int, errors: list[AttemptError] | None = None
) -> JobResult:
    return JobResult(
        job_id=job.id,
        batch_id=job.batch_id,
        status=status,
        model=model,
        attempts=attempts,
        errors=errors or [],
        timings=Timings(queued_at=job.created_at, started_at=job.created_at, finished_at=datetime.now(UTC)),
        metadata=job.metadata,
        via="batch-api",
    )


def _usage(body: dict[str, Any]) -> Usage | None:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        total_tokens=usage.get("total_tokens") or 0,
    )


def _batch_price(model: str, usage: Usage | None) -> float | None:
    """LiteLLM's Batch API price for the usage; None for a model without a price."""
    if usage is None:
        return None
    try:
        prompt, completion = batch_cost_calculator(
            LiteLLMUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens), model
        )
    except Exception:
        return None
    total = prompt + completion
    return total if total else None
