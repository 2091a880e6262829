"""llmqueue's exceptions, all rooted in one base class.

    LLMQueueError
    ├── ConfigError            bad settings or config.toml (names the key and the file)
    ├── JobValidationError     a job that cannot be run as given (names the fields)
    ├── RedisUnavailableError  Redis could not be reached or started
    │   └── RedisRefusedError      Redis refused this process (credentials, ACL): waiting cannot heal it
    ├── ResultTimeoutError     a result did not arrive within the time asked for
    ├── JobNotFoundError       an awaited job that Redis no longer holds (unknown id, expired)
    ├── BatchError             a batch operation that cannot be done (unknown batch, bad id)
    │   ├── BatchFileError         a batch file that cannot be read at all
    │   ├── InvalidBatchFileError  a batch file with bad lines; nothing was queued
    │   ├── BatchStalledError      a batch that can no longer finish (jobs neither queued nor done)
    │   └── BatchBusyError         a batch another ``llmqueue run`` is running
    ├── WorkerDiedError        a worker process that ``llmqueue run`` started exited
    ├── CacheError             the response cache cannot be opened or used where it was asked for
    └── ProviderError          a provider call failed; ``retryable`` says whether trying again may help
        ├── RetryableProviderError
        │   └── RateLimitedError   HTTP 429; carries the provider's retry-after, if any
        └── PermanentProviderError

LiteLLM's exceptions are translated into ProviderError subclasses in ``llmqueue.llm.classify`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LLMQueueError(Exception):
    """Base class of every error llmqueue raises on purpose."""


class ConfigError(LLMQueueError):
    """Settings that cannot be used: the message names the key and where it came from."""


class JobValidationError(LLMQueueError):
    """A job that fails validation; the message lists each bad field."""


class RedisUnavailableError(LLMQueueError):
    """Redis could not be reached (or an embedded server could not be started)."""


class RedisRefusedError(RedisUnavailableError):
    """Redis answered but refused this process (credentials, permissions): retrying cannot help."""


class JobNotFoundError(LLMQueueError, LookupError):
    """An awaited job Redis no longer holds: neither queued, running nor finished.

    Redis lost its data (restarted without persistence, or evicted keys under ``maxmemory``), an id
    that was never submitted (or submitted to another Redis), a job whose payload expired before a
    worker took it (``job_ttl``), or a result kept past ``result_ttl``. ``job_ids`` names the jobs.
    """

    def __init__(self, message: str, *, job_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.job_ids = list(job_ids)


class ResultTimeoutError(LLMQueueError, TimeoutError):
    """A job's result did not arrive within the timeout given to ``JobHandle.result``."""


class ProviderError(LLMQueueError):
    """A provider call failed.

    ``status_code`` is the HTTP status when there was one; ``kind`` is a short stable name
    (``rate_limit``, ``timeout``, ``server_error``, ``auth``, ``bad_request`` …) for results and metrics.
    ``body`` is the provider's error body as it sent it and ``request_id`` its request id, when the
    failure was an HTTP answer that had them. ``sent`` is False for a call refused before it left
    (LiteLLM's ``UnsupportedParamsError``): no request reached the provider.
    """

    retryable: bool = False

    def __init__(self, message: str, *, kind: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status_code = status_code
        self.body: object = None
        self.request_id: str | None = None
        self.sent = True


class RetryableProviderError(ProviderError):
    """A failure that may succeed later: timeouts, connection errors, 5xx, 429."""

    retryable = True


class RateLimitedError(RetryableProviderError):
    """HTTP 429. ``retry_after`` is the provider's requested pause in seconds, when it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, kind="rate_limit", status_code=429)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """A failure that will not change on retry: bad request, auth, unknown model, content policy."""


class BatchError(LLMQueueError):
    """A batch operation that cannot be done: unknown batch, bad file, invalid id."""


class BatchFileError(BatchError):
    """A batch file that cannot be read at all (missing, a directory, not UTF-8); the message names it."""


class InvalidBatchFileError(BatchError):
    """The file has bad lines and ``skip_invalid`` was not given; nothing was enqueued.

    ``check`` is the :class:`llmqueue.batches.input.FileCheck` that found them.
    """

    def __init__(self, message: str, check: Any) -> None:
        super().__init__(message)
        self.check = check


class CacheError(LLMQueueError):
    """The response cache cannot be used: an unwritable directory, a damaged file, a misplaced backend."""


class BatchStalledError(BatchError):
    """A batch that can no longer finish as it is: the message says why and how to complete it."""


class BatchBusyError(BatchError):
    """Another ``llmqueue run`` is running this batch: a second one is refused, not merged with it."""


class WorkerDiedError(LLMQueueError):
    """A worker process that ``llmqueue run`` started exited while the batch was running."""


class RunStoppedError(BatchError):
    """``llmqueue run`` stopped a batch that had begun (a big file's check found a bad line, or a model
    without a price under a budget, while its first lines ran): what it queued stays, for a resume.

    The message names the resume command; ``with_resume(command)`` is the message with another one
    (the CLI's, which carries the run's options)."""

    _RESUME = "\x00resume\x00"

    def __init__(self, template: str, batch_id: str) -> None:
        self.template = template
        self.batch_id = batch_id
        super().__init__(self.with_resume(f"llmqueue run --resume {batch_id}"))

    @classmethod
    def resume_here(cls) -> str:
        """Where the resume command goes in a template."""
        return cls._RESUME

    def with_resume(self, command: str) -> str:
        return self.template.replace(self._RESUME, command)
