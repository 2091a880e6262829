"""Translate LiteLLM's exceptions into llmqueue's retryable / permanent errors, in this one place."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from litellm import exceptions as llm_errors

from llmqueue.errors import (
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from llmqueue.ops.redaction import redact

_TRANSIENT_STATUS = frozenset({408, 409, 500, 502, 503, 504, 529})

# Most specific first: ContextWindowExceededError is a BadRequestError, for instance.
_PERMANENT: tuple[tuple[type[BaseException], str], ...] = (
    (llm_errors.ContextWindowExceededError, "context_window_exceeded"),
    (llm_errors.ContentPolicyViolationError, "content_policy"),
    (llm_errors.AuthenticationError, "auth"),
    (llm_errors.PermissionDeniedError, "permission_denied"),
    (llm_errors.NotFoundError, "not_found"),
    (llm_errors.BadRequestError, "bad_request"),
    (llm_errors.UnprocessableEntityError, "unprocessable"),
)
_TRANSIENT: tuple[tuple[type[BaseException], str], ...] = (
    (llm_errors.Timeout, "timeout"),
    (asyncio.TimeoutError, "timeout"),
    (llm_errors.APIConnectionError, "connection"),
    (llm_errors.ServiceUnavailableError, "server_error"),
    (llm_errors.InternalServerError, "server_error"),
    (llm_errors.BadGatewayError, "server_error"),
)


def classify(exc: BaseException, secrets: Iterable[str] = ()) -> ProviderError:
    """Map a provider call's exception to a ProviderError; ``secrets`` are scrubbed from the message."""
    if isinstance(exc, ProviderError):
        return exc
    message = redact(f"{type(exc).__name__}: {exc}", secrets)
    status = _status_code(exc)
    if isinstance(exc, llm_errors.RateLimitError) or status == 429:
        return RateLimitedError(message, retry_after=retry_after_seconds(_headers(exc)))
    if not isinstance(exc, llm_errors.Timeout | asyncio.TimeoutError) and _lost_connection(exc):
        # LiteLLM reports a refused or dropped connection as a 500 ("Connection error."); it is the
        # endpoint that is unreachable, which routing treats differently from a server's 5xx answer.
        return RetryableProviderError(message, kind="connection")
    for cls, kind in _TRANSIENT:
        if isinstance(exc, cls):
            return RetryableProviderError(message, kind=kind, status_code=status)
    for cls, kind in _PERMANENT:
        if isinstance(exc, cls):
            return PermanentProviderError(message, kind=kind, status_code=status)
    if status in _TRANSIENT_STATUS or (status is not None and status >= 500):
        return RetryableProviderError(message, kind="server_error", status_code=status)
    if status is not None and 400 <= status < 500:
        return PermanentProviderError(message, kind="bad_request", status_code=status)
    if isinstance(exc, ConnectionError | OSError):
        return RetryableProviderError(message, kind="connection")
    return PermanentProviderError(message, kind="error", status_code=status)


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The pause a provider asked for, from ``retry-after-ms`` or ``retry-after`` (seconds or a date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _lost_connection(exc: BaseException) -> bool:
    """Whether a connection to the provider failed (refused, reset, dropped) under ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, httpx.NetworkError | httpx.RemoteProtocolError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if not headers:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return dict(headers) if headers else None
