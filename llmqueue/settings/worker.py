"""How the queue runs: ``[worker]`` (env ``WORKER_*``), ``[batch]`` budgets and the ``[cache]``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class WorkerConfig(BaseModel):
    """Queue and worker behaviour (env ``WORKER_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    queue_name: str = "llmqueue:queue"
    max_jobs: int = Field(200, ge=1, description="concurrent jobs per worker process")
    reserved_slots: int | None = Field(
        None,
        ge=0,
        description="slots per worker that batch-priority jobs may not take (default: a tenth of max_jobs, "
        "at least 1)",
    )
    poll_delay: float = Field(0.05, gt=0, description="seconds between queue polls")
    max_inline_wait: float = Field(
        2.0, ge=0, description="seconds a job may wait for the limiter in place before it is re-deferred"
    )
    job_ttl: float = Field(7 * 86400.0, gt=0, description="seconds a queued job is kept before it expires")
    result_ttl: float = Field(7 * 86400.0, gt=0, description="seconds results are kept")
    health_check_interval: float = Field(10.0, gt=0, description="seconds")
    in_progress_ttl: float = Field(
        20.0, gt=0, description="seconds a running job stays claimed without a heartbeat (crash recovery)"
    )
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between heartbeats")
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds running calls may finish after SIGTERM before they are put back"
    )
    redis_connect_retries: int = Field(
        10, ge=0, description="start-up attempts to reach Redis, each retrying its PING for ~17 s"
    )
    warm_up: bool = Field(
        True, description="make one local LiteLLM call at start-up so the first real one is fast"
    )

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> WorkerConfig:
        if self.heartbeat_interval * 2 > self.in_progress_ttl:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval:g}) must be at most half of in_progress_ttl "
                f"({self.in_progress_ttl:g}), or running jobs lose their claim between beats"
            )
        return self

    @model_validator(mode="after")
    def _reserve_leaves_slots(self) -> WorkerConfig:
        if self.reserved_slots is not None and self.reserved_slots >= self.max_jobs:
            raise ValueError(
                f"reserved_slots ({self.reserved_slots}) must be below max_jobs ({self.max_jobs}), "
                "or batch jobs could never run"
            )
        return self

    def slots_reserved(self) -> int:
        """Slots kept for jobs above ``batch`` priority: ``reserved_slots``, or a tenth of max_jobs."""
        if self.reserved_slots is not None:
            return self.reserved_slots
        return max(1, self.max_jobs // 10) if self.max_jobs > 1 else 0

    def job_timeout(self, llm_timeout: float) -> float:
        """arq's hard timeout: longer than the LLM call's own timeout plus the longest inline wait, plus
        the time a worker keeps retrying to store a result it paid for (``RESULT_STORE_PATIENCE``)."""
        return llm_timeout + self.max_inline_wait + 30.0 + RESULT_STORE_PATIENCE


RESULT_STORE_PATIENCE = 60.0
"""Seconds a worker keeps trying to store the result of a paid call while Redis refuses writes."""


class BatchConfig(BaseModel):
    """Defaults for batches (``[batch]``, env ``BATCH_<FIELD>``): spending caps for new batches, overridden
    by ``--max-cost``/``--max-tokens`` (a resume keeps its batch's caps unless it is given new ones)."""

    model_config = ConfigDict(extra="forbid")

    max_cost: float | None = Field(None, gt=0, description="USD; no job of a batch starts once it spent this")
    max_tokens: int | None = Field(None, gt=0, description="tokens; no job starts once a batch used this")
    window: int | None = Field(
        None,
        ge=1,
        description="jobs of a batch `llmqueue run` keeps unfinished in Redis as it feeds the file "
        "(default: from the rate and the workers' slots, 200 to 20,000)",
    )
    check_first_bytes: int = Field(
        64 * 2**20,
        ge=0,
        description="bytes: `llmqueue run` checks a file up to this size whole before it queues a line; "
        "a larger one is checked while its first lines run, and the run stops before its first bad "
        "line (the answers before it kept, to resume)",
    )


class CacheConfig(BaseModel):
    """The response cache (``[cache]``, env ``CACHE_<FIELD>``; ``cache = false`` turns it off).

    Batch lines are cached unless ``enabled`` is false (or ``--no-cache``); single jobs only when they
    set ``cache=True``. ``backend = "disk"`` keeps responses in a SQLite file under ``dir`` (default: the
    user's cache directory), which outlives the embedded Redis of ``llmqueue run``; ``"redis"`` keeps
    them in the queue's own Redis, for a long-running one.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    backend: Literal["disk", "redis"] = "disk"
    dir: Path | None = Field(None, description="disk backend: default $XDG_CACHE_HOME/llmqueue")
    ttl: float | None = Field(None, gt=0, description="seconds a response is reused; None: until evicted")
    max_size_mb: float = Field(1024.0, gt=0, description="MB of responses kept; the oldest go first")

    def resolved_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """``dir``, or ``$XDG_CACHE_HOME/llmqueue`` (``~/.cache/llmqueue`` when that is unset)."""
        if self.dir is not None:
            return self.dir.expanduser()
        env = os.environ if environ is None else environ
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "llmqueue"


def cache_section(value: Any) -> Any:
    """``cache = false`` (or true) at the top level is ``[cache] enabled = ...``."""
    return {"enabled": value} if isinstance(value, bool) else value


CacheSection = Annotated[CacheConfig, BeforeValidator(cache_section)]
"""The ``[cache]`` section, or ``cache = false`` (or true) at the top level."""
