"""``--dry-run``: what a batch file would cost and how long it would take, without calling anyone.

Per model: the lines, how many the response cache would answer, the prompt tokens of the others
(LiteLLM's counter), the completion tokens they may use (``max_tokens``, ``max_completion_tokens`` or
``default_completion_tokens``), the cost from LiteLLM's price table as a range from "every answer empty"
to "every answer as long as allowed", at the standard and at the Batch API price, and the time the rate
limits in force need to let the calls through. Nothing is queued and no provider is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmqueue.batches.input import check_file, invalid_file_error, iter_jobs
from llmqueue.cache import CacheStore, job_cache_key, open_store
from llmqueue.connection import redis_client
from llmqueue.llm.policy import submission_refusal
from llmqueue.llm.request import job_model
from llmqueue.models import Job
from llmqueue.ops.collector import collector_paused
from llmqueue.settings import LimitConfig, Settings


@dataclass
class CostRange:
    """USD from ``low`` (no completion tokens) to ``high`` (every completion at its limit)."""

    low: float = 0.0
    high: float = 0.0


@dataclass
class ModelEstimate:
    """One model's share of a batch. Tokens, cost and time count only lines the cache will not answer."""

    model: str
    scope: str
    limit: LimitConfig | None
    lines: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """The most completion tokens the calls may use."""
    cost: CostRange | None = field(default_factory=CostRange)
    """None when LiteLLM knows no price for the model."""
    batch_cost: CostRange | None = field(default_factory=CostRange)

    @property
    def calls(self) -> int:
        return self.lines - self.cache_hits


@dataclass
class Estimate:
    models: list[ModelEstimate]
    scope_seconds: dict[str, float | None]
    """Seconds each limit scope needs at its rpm/tpm; None for a scope without a limit."""

    @property
    def lines(self) -> int:
        return sum(m.lines for m in self.models)

    def seconds(self, model: ModelEstimate) -> float | None:
        return self.scope_seconds[model.scope]


async def estimate_jobs(jobs: Iterable[Job], settings: Settings, cache: CacheStore | None) -> Estimate:
    """Estimate the calls of ``jobs`` (a checked file's jobs) under ``settings``; ``cache`` None: no cache."""
    # LiteLLM (its token counter and prices) takes seconds to import: only once the file passed its check.
    with collector_paused():
        from llmqueue.limits.tokens import estimate_split

    by_model: dict[str, ModelEstimate] = {}
    scope_use: dict[str, list[float]] = {}
    for job in jobs:
        llm = settings.llm_for(job.llm_config)
        model = job_model(job, llm)
        scope = llm.limit_scope or model
        entry = by_model.get(model)
        if entry is None:
            entry = by_model[model] = ModelEstimate(model, scope, settings.limit_for(scope, llm))
        entry.lines += 1
        if cache is not None and job.cache and await cache.has(job_cache_key(job, llm)):
            entry.cache_hits += 1
            continue
        tokens = estimate_split(job, model, llm.default_completion_tokens)
        entry.prompt_tokens += tokens.prompt
        entry.completion_tokens += tokens.completion
        use = scope_use.setdefault(scope, [0.0, 0.0, 0.0, 0.0])
        for i, amount in enumerate((1, tokens.total, tokens.prompt, tokens.completion)):
            use[i] += amount
    for entry in by_model.values():
        # Prices are per token, so the totals' cost is the sum of the lines' costs.
        entry.cost = _standard_cost(entry.model, entry.prompt_tokens, entry.completion_tokens)
        entry.batch_cost = _batch_cost(entry.model, entry.prompt_tokens, entry.completion_tokens)
    scope_seconds = {
        m.scope: _seconds(m.limit, *scope_use.get(m.scope, [0.0, 0.0, 0.0, 0.0])) for m in by_model.values()
    }
    return Estimate(models=sorted(by_model.values(), key=lambda m: m.model), scope_seconds=scope_seconds)


def _seconds(
    limit: LimitConfig | None, requests: float, tokens: float, prompt: float, completion: float
) -> float | None:
    """Time for ``requests`` calls of ``tokens`` tokens in all (``prompt`` in and ``completion`` out) at
    ``limit``'s rates (None: no limit)."""
    if limit is None:
        return None
    minutes = max(
        requests / limit.rpm if limit.rpm else 0.0,
        tokens / limit.tpm if limit.tpm else 0.0,
        prompt / limit.itpm if limit.itpm else 0.0,
        completion / limit.otpm if limit.otpm else 0.0,
    )
    return minutes * 60


def _standard_cost(model: str, prompt: int, completion: int) -> CostRange | None:
    import litellm  # loaded by estimate_jobs already

    try:
        low = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=0))
        high = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion))
    except Exception:  # LiteLLM raises for a model it has no price for
        return None
    return CostRange(low, high)


def _batch_cost(model: str, prompt: int, completion: int) -> CostRange | None:
    from litellm.cost_calculator import batch_cost_calculator  # loaded by estimate_jobs already
    from litellm.types.utils import Usage

    if _unpriced(model):
        return None
    low = sum(batch_cost_calculator(Usage(prompt_tokens=prompt, completion_tokens=0), model))
    high = sum(batch_cost_calculator(Usage(prompt_tokens=prompt, completion_tokens=completion), model))
    return CostRange(low, high)


def _unpriced(model: str) -> bool:
    import litellm  # loaded by estimate_jobs already

    try:
        info = litellm.get_model_info(model)
    except Exception:
        return True
    return info.get("input_cost_per_token") is None and info.get("input_cost_per_token_batches") is None


async def estimate_file(
    path: Path,
    settings: Settings,
    *,
    default_model: str | None = None,
    llm_config: str | None = None,
    use_cache: bool = True,
) -> Estimate:
    """Check ``path`` as a submission would (InvalidBatchFileError for bad lines or lines the workers'
    policy refuses, before anything else) and estimate its calls.

    ``use_cache`` False (``--no-cache``), or ``[cache] enabled = false``, counts no cache hits.
    """
    options: dict[str, Any] = {
        "batch_id": "dry-run",
        "default_model": default_model,
        "llm_config": llm_config,
    }
    check = check_file(path, **options, refuse=lambda job: submission_refusal(job, settings))
    if not check.ok:
        raise invalid_file_error(check, path)
    jobs = (item for item in iter_jobs(path, **options) if isinstance(item, Job))
    if not (use_cache and settings.cache.enabled):
        return await estimate_jobs(jobs, settings, None)
    redis = redis_client(settings.redis_url.get_secret_value()) if settings.cache.backend == "redis" else None
    store = open_store(settings.cache, redis)
    try:
        return await estimate_jobs((job.model_copy(update={"cache": True}) for job in jobs), settings, store)
    finally:
        await store.close()
        if redis is not None:
            await redis.aclose()
