"""Translate LiteLLM's exceptions into llmqueue's retryable / permanent errors, in this one place."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import openai
from litellm import exceptions as llm_errors

from llmqueue.errors import (
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from llmqueue.llm.as_sent import error_body, request_id_of_error
from llmqueue.models import replace_lone_surrogates
from llmqueue.redaction import redact

MAX_MESSAGE_CHARS = 500
"""An error's message is cut to this many characters (after any Python traceback in it is dropped)."""

# LiteLLM's words when a 2xx answer's body is not a response it can read (its OpenAI-compatible path).
_UNREADABLE_PHRASES = (
    "Invalid response object",
    "Empty or invalid response",
    "returned a response with no 'choices'",
)
# Python errors LiteLLM raises while parsing a body; seen with no HTTP error under them, they mean the
# provider answered 2xx with a body that is not what it should be.
_PARSE_ERRORS = (json.JSONDecodeError, KeyError, AttributeError, TypeError)
# Evidence that the failure was an HTTP status or the connection, not the body of a 2xx answer.
_HTTP_FAILURES = (
    openai.APIStatusError,
    openai.APIConnectionError,
    httpx.HTTPStatusError,
    httpx.TransportError,
)

_TRANSIENT_STATUS = frozenset({408, 409, 500, 502, 503, 504, 529})

# OpenAI's 429 for a request that exceeds the per-minute limit on its own: "Request too large for gpt-4o in
# organization org-x on tokens per min (TPM): Limit 60000, Requested 143000. The input or output tokens
# must be reduced in order to run successfully."
_TOO_LARGE = re.compile(
    r"Request too large for (?P<model>\S+)(?: in organization \S+)? on (?P<what>[a-z ]+?)"
    r"(?: \((?P<unit>[A-Z]+)\))?: Limit (?P<limit>[\d,]+), Requested (?P<requested>[\d,]+)"
)

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
    """Map a provider call's exception to a ProviderError; ``secrets`` are scrubbed from the message.

    An HTTP error answer keeps the provider's body as sent and its request id (``as_sent``)."""
    if isinstance(exc, ProviderError):
        return exc
    secrets = list(secrets)
    if isinstance(exc, llm_errors.UnsupportedParamsError):
        return unsupported_params(short_message(redact(str(exc), secrets)))
    error = _classify(exc, secrets)
    if error.status_code is not None and error.status_code >= 400:
        error.body = error_body(exc, error.status_code, secrets)
        error.request_id = request_id_of_error(exc)
    return error


def _classify(exc: BaseException, secrets: list[str]) -> ProviderError:
    message = short_message(redact(f"{type(exc).__name__}: {exc}", secrets))
    if is_unreadable_response(exc):
        return invalid_response(message)
    status = _status_code(exc)
    if isinstance(exc, llm_errors.RateLimitError) or status == 429:
        too_large = request_too_large(message)
        if too_large is not None:
            return too_large
        return RateLimitedError(message, retry_after=retry_after_seconds(_headers(exc)))
    if _refused_by_the_sdk(exc):
        # The OpenAI SDK would not build the request (no API key in the worker's settings): LiteLLM
        # reports a 500, but nothing was sent and no retry can mend the worker's configuration.
        about_key = any(word in message for word in ("credentials", "api_key", "API key"))
        return PermanentProviderError(message, kind="auth" if about_key else "error")
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


def request_too_large(message: str) -> PermanentProviderError | None:
    """The error for a 429 whose ``message`` says the request alone exceeds a per-minute limit
    (``request_too_large``); None for any other message.

    Not retried, and no reason to pause anyone else: no wait lets the request fit, only a smaller one
    (shorter input, lower ``max_tokens``) or a higher limit. The message leads with the numbers.
    """
    found = _TOO_LARGE.search(message)
    if found is None:
        return None
    unit = f" ({found['unit']})" if found["unit"] else ""
    summary = (
        f"request too large for {found['model']}: {found['requested']} tokens requested, above the limit "
        f"of {found['limit']} {found['what']}{unit}; reduce the input or max_tokens (not retried): "
    )
    return PermanentProviderError(short_message(summary + message), kind="request_too_large", status_code=429)


def unsupported_params(message: str) -> PermanentProviderError:
    """The error for a call LiteLLM refused before sending it: the model takes no such parameter.

    LiteLLM's advice (``litellm.drop_params=True``) is put in llmqueue's words: ``drop_params`` in
    ``[llm]`` or ``LLM_DROP_PARAMS=true``.
    """
    # LiteLLM's advice (litellm.drop_params, a proxy setting, allowed_openai_params) is not llmqueue's.
    head = re.split(r"\s*To drop (?:these|it)\b", message, maxsplit=1)[0].rstrip()
    message = (
        f"{head} Set drop_params = true in [llm] (LLM_DROP_PARAMS=true) to drop them, or leave them out "
        "of the job's params."
    )
    error = PermanentProviderError(message, kind="unsupported_params")
    error.sent = False
    return error


def invalid_response(message: str) -> PermanentProviderError:
    """The error for a 2xx answer without a usable response (``invalid_response``, status 200).

    Not retried: the provider answered, so the call was most likely billed; ``llmqueue retry`` queues
    such jobs again on purpose.
    """
    return PermanentProviderError(message, kind="invalid_response", status_code=200)


def is_unreadable_response(exc: BaseException) -> bool:
    """True when LiteLLM failed on the body of a 2xx answer (truncated JSON, HTML, no ``choices`` …)
    rather than on an HTTP status or the connection."""
    # LiteLLM's own exceptions subclass the OpenAI SDK's status errors: only what lies under them tells.
    causes = _chain(exc)[1:]
    if any(isinstance(link, _HTTP_FAILURES) for link in causes):
        return False
    if any(phrase in str(link) for link in causes for phrase in _UNREADABLE_PHRASES):
        return True
    return any(isinstance(link, _PARSE_ERRORS) for link in causes)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen and len(seen) < 20:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def short_message(message: str) -> str:
    """The message without a Python traceback pasted into it, at most ``MAX_MESSAGE_CHARS`` long."""
    message = replace_lone_surrogates(message.split("Traceback (most recent call last)")[0].rstrip())
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


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


def _refused_by_the_sdk(exc: BaseException) -> bool:
    """Whether the OpenAI SDK's own error, raised before any request (its status and connection errors
    are subclasses), lies under ``exc``."""
    return any(type(link) is openai.OpenAIError for link in _chain(exc))


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if not headers:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return dict(headers) if headers else None
