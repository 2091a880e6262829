"""What ``llmqueue run`` was asked to do, and the settings its workers get from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmqueue.models import PRIORITIES
from llmqueue.settings import LLMConfig, Settings

# The [llm] settings ``run`` may give its workers in their environment (the simulated provider's).
WORKER_LLM_ENV = {"LLM_MODEL": "model", "LLM_BASE_URL": "base_url", "LLM_API_KEY": "api_key"}


@dataclass
class RunOptions:
    """What ``llmqueue run`` was asked to do."""

    file: Path | None
    output: Path
    batch_id: str | None = None
    resume: bool = False
    workers: int = 2
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    model: str | None = None
    llm_config: str | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    skip_invalid: bool = False
    rejects: Path | None = None
    priority: int = PRIORITIES["batch"]
    weight: float = 1.0
    redis_url: str | None = None
    config: Path | None = None
    via: str = "live"
    """``live`` (workers call the provider) or ``batch-api`` (the provider's Batch API, at its price)."""
    fallback: str = "batch-api"
    """``batch-api``: unanswered lines go out in another provider batch; ``live``: to the workers."""
    poll_interval: float = 10.0
    """Seconds between two looks at the provider's batches (``batch-api``)."""
    enqueued_token_limit: int | None = None
    """``batch-api``: the provider's enqueued-token limit per model (files are cut and paced to it)."""
    cache_dir: Path | None = None
    cache: bool = True
    """Answer lines from the response cache and keep new answers there (``--no-cache``: False)."""
    litellm_config: Path | None = None
    worker_env: dict[str, str] = field(default_factory=dict)


def run_settings(settings: Settings, *, model: str | None, rpm: float | None, tpm: float | None) -> Settings:
    """The settings the run's workers will have: ``--model``, ``--rpm`` and ``--tpm`` laid over ``[llm]``."""
    update: dict[str, object] = {}
    if model:
        update["model"] = model
    if rpm is not None:
        update["rpm"] = rpm
    if tpm is not None:
        update["tpm"] = tpm
    return settings.model_copy(update={"llm": settings.llm.model_copy(update=update)})


def with_workers_llm(settings: Settings, worker_env: Mapping[str, str]) -> Settings:
    """``settings`` with the ``[llm]`` values of ``WORKER_LLM_ENV`` found in the workers' environment."""
    updates = {field: worker_env[env] for env, field in WORKER_LLM_ENV.items() if env in worker_env}
    if not updates:
        return settings
    llm = LLMConfig.model_validate({**settings.llm.model_dump(), **updates})
    return settings.model_copy(update={"llm": llm})
