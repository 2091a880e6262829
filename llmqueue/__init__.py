"""llmqueue: a Redis job queue for rate-limited LLM calls (arq workers, LiteLLM, a shared token bucket)."""

import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from llmqueue.errors import (
    ConfigError,
    JobValidationError,
    LLMQueueError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RedisUnavailableError,
    ResultTimeoutError,
    RetryableProviderError,
)
from llmqueue.models import AttemptError, Job, JobResult, Usage
from llmqueue.producer import JobHandle, Producer
from llmqueue.settings import LimitConfig, LLMConfig, Settings, WorkerConfig, load_settings

try:
    __version__ = version("llmqueue")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "AttemptError",
    "ConfigError",
    "Job",
    "JobHandle",
    "JobResult",
    "JobValidationError",
    "LLMConfig",
    "LLMQueueError",
    "LimitConfig",
    "PermanentProviderError",
    "Producer",
    "ProviderError",
    "RateLimitedError",
    "RedisUnavailableError",
    "ResultTimeoutError",
    "RetryableProviderError",
    "Settings",
    "Usage",
    "WorkerConfig",
    "__version__",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    # ``CompletionJob`` was ``Job``'s name before it also carried embeddings.
    if name == "CompletionJob":
        warnings.warn("CompletionJob is now llmqueue.Job", DeprecationWarning, stacklevel=2)
        return Job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
