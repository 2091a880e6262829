"""llmqueue: a Redis job queue for rate-limited LLM calls (arq workers, LiteLLM, a shared token bucket)."""

from importlib.metadata import PackageNotFoundError, version

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
from llmqueue.models import AttemptError, CompletionJob, JobResult, Usage
from llmqueue.producer import JobHandle, Producer
from llmqueue.settings import LimitConfig, LLMConfig, Settings, WorkerConfig, load_settings

try:
    __version__ = version("llmqueue")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "AttemptError",
    "CompletionJob",
    "ConfigError",
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
