"""classify: LiteLLM's exceptions become llmqueue's retryable / permanent provider errors."""

import email.utils

import httpx
import litellm
import openai
import pytest

from llmqueue.errors import (
    PermanentProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from llmqueue.llm.classify import classify, retry_after_seconds

MODEL = "gpt-4o"
PROVIDER = "openai"
REQUEST = httpx.Request("POST", "https://api.example.test/v1/chat/completions")


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


def rate_limit_error(headers: dict[str, str] | None = None) -> litellm.RateLimitError:
    return litellm.RateLimitError(
        "slow down", llm_provider=PROVIDER, model=MODEL, response=response(429, headers)
    )


# ---- rate limits ---------------------------------------------------------------------------------


def test_rate_limit_error_becomes_rate_limited_error() -> None:
    error = classify(rate_limit_error())

    assert isinstance(error, RateLimitedError)
    assert (error.retryable, error.kind, error.status_code) == (True, "rate_limit", 429)


def test_rate_limit_error_without_headers_has_no_retry_after() -> None:
    error = classify(rate_limit_error())

    assert isinstance(error, RateLimitedError)
    assert error.retry_after is None


def test_rate_limit_retry_after_header_in_seconds_is_carried() -> None:
    error = classify(rate_limit_error({"retry-after": "7"}))

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7.0


def test_rate_limit_retry_after_ms_header_wins_over_retry_after() -> None:
    error = classify(rate_limit_error({"retry-after": "7", "retry-after-ms": "1500"}))

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 1.5


def test_rate_limit_retry_after_is_read_from_litellm_response_headers() -> None:
    exc = rate_limit_error()
    exc.litellm_response_headers = httpx.Headers({"Retry-After": "3"})  # type: ignore[attr-defined]

    error = classify(exc)

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 3.0


def test_any_exception_with_status_429_is_rate_limited() -> None:
    exc = litellm.APIError(429, "too many", llm_provider=PROVIDER, model=MODEL)

    assert isinstance(classify(exc), RateLimitedError)


# ---- transient errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "status_code"),
    [
        (litellm.Timeout("took too long", model=MODEL, llm_provider=PROVIDER), "timeout", 408),
        (litellm.APIConnectionError("refused", llm_provider=PROVIDER, model=MODEL), "connection", 500),
        (litellm.InternalServerError("boom", llm_provider=PROVIDER, model=MODEL), "server_error", 500),
        (litellm.ServiceUnavailableError("down", llm_provider=PROVIDER, model=MODEL), "server_error", 503),
        (litellm.BadGatewayError("gateway", llm_provider=PROVIDER, model=MODEL), "server_error", 502),
    ],
    ids=[
        "Timeout",
        "APIConnectionError",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
    ],
)
def test_transient_litellm_errors_are_retryable_with_their_kind(
    exc: Exception, kind: str, status_code: int
) -> None:
    error = classify(exc)

    assert type(error) is RetryableProviderError
    assert (error.retryable, error.kind, error.status_code) == (True, kind, status_code)


def test_asyncio_wait_for_timeout_is_a_retryable_timeout() -> None:
    # asyncio.wait_for raises TimeoutError (asyncio.TimeoutError is the same class since 3.11).
    error = classify(TimeoutError())

    assert isinstance(error, RetryableProviderError)
    assert (error.kind, error.status_code) == ("timeout", None)


def test_api_error_with_status_503_is_a_retryable_server_error() -> None:
    error = classify(litellm.APIError(503, "unavailable", llm_provider=PROVIDER, model=MODEL))

    assert isinstance(error, RetryableProviderError)
    assert (error.kind, error.status_code) == ("server_error", 503)


def test_api_error_with_status_418_is_permanent() -> None:
    error = classify(litellm.APIError(418, "teapot", llm_provider=PROVIDER, model=MODEL))

    assert isinstance(error, PermanentProviderError)
    assert (error.retryable, error.kind, error.status_code) == (False, "bad_request", 418)


def test_os_level_connection_error_is_retryable() -> None:
    error = classify(ConnectionResetError("connection reset by peer"))

    assert isinstance(error, RetryableProviderError)
    assert error.kind == "connection"


# ---- permanent errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "status_code"),
    [
        (litellm.BadRequestError("bad", model=MODEL, llm_provider=PROVIDER), "bad_request", 400),
        (litellm.AuthenticationError("no key", llm_provider=PROVIDER, model=MODEL), "auth", 401),
        (
            litellm.PermissionDeniedError(
                "denied", llm_provider=PROVIDER, model=MODEL, response=response(403)
            ),
            "permission_denied",
            403,
        ),
        (litellm.NotFoundError("no such model", model=MODEL, llm_provider=PROVIDER), "not_found", 404),
        (
            litellm.ContextWindowExceededError("too long", model=MODEL, llm_provider=PROVIDER),
            "context_window_exceeded",
            400,
        ),
        (
            litellm.ContentPolicyViolationError("refused", model=MODEL, llm_provider=PROVIDER),
            "content_policy",
            400,
        ),
        (
            litellm.UnprocessableEntityError(
                "bad", model=MODEL, llm_provider=PROVIDER, response=response(422)
            ),
            "unprocessable",
            422,
        ),
    ],
    ids=[
        "BadRequestError",
        "AuthenticationError",
        "PermissionDeniedError",
        "NotFoundError",
        "ContextWindowExceededError",
        "ContentPolicyViolationError",
        "UnprocessableEntityError",
    ],
)
def test_permanent_litellm_errors_are_permanent_with_their_kind(
    exc: Exception, kind: str, status_code: int
) -> None:
    error = classify(exc)

    assert type(error) is PermanentProviderError
    assert (error.retryable, error.kind, error.status_code) == (False, kind, status_code)


def test_unknown_exception_is_permanent_with_kind_error() -> None:
    error = classify(ValueError("unexpected"))

    assert isinstance(error, PermanentProviderError)
    assert (error.kind, error.status_code) == ("error", None)


def test_provider_error_is_returned_unchanged() -> None:
    original = RetryableProviderError("already classified", kind="timeout")

    assert classify(original) is original


# ---- messages ------------------------------------------------------------------------------------


def test_message_names_the_exception_type_and_keeps_its_text() -> None:
    error = classify(litellm.NotFoundError("model gpt-9 does not exist", model=MODEL, llm_provider=PROVIDER))

    assert error.message.startswith("NotFoundError: ")
    assert "model gpt-9 does not exist" in error.message


def test_secrets_passed_in_are_redacted_from_the_message() -> None:
    exc = litellm.AuthenticationError("key my-private-key-value rejected", llm_provider=PROVIDER, model=MODEL)

    error = classify(exc, secrets=["my-private-key-value"])

    assert "my-private-key-value" not in error.message
    assert "key *** rejected" in error.message
    assert "my-private-key-value" not in str(error)


def test_openai_style_keys_are_redacted_even_when_not_passed_as_secrets() -> None:
    exc = litellm.AuthenticationError(
        "Incorrect API key provided: sk-abcdef1234567890", llm_provider=PROVIDER, model=MODEL
    )

    assert "sk-abcdef1234567890" not in classify(exc).message


# ---- retry_after_seconds -------------------------------------------------------------------------


def test_retry_after_seconds_prefers_the_ms_header() -> None:
    assert retry_after_seconds({"retry-after": "9", "retry-after-ms": "250"}) == 0.25


def test_retry_after_seconds_reads_plain_seconds() -> None:
    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5


def test_retry_after_seconds_header_names_are_case_insensitive() -> None:
    assert retry_after_seconds({"Retry-After-Ms": "3000"}) == 3.0


def test_retry_after_seconds_reads_an_http_date_relative_to_now() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 42, usegmt=True)

    assert retry_after_seconds({"retry-after": header}, now=now) == 42.0


def test_retry_after_seconds_of_a_past_http_date_is_zero() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now - 60, usegmt=True)

    assert retry_after_seconds({"retry-after": header}, now=now) == 0.0


def test_retry_after_seconds_of_a_negative_number_is_zero() -> None:
    assert retry_after_seconds({"retry-after": "-5"}) == 0.0


def test_retry_after_seconds_of_garbage_is_none() -> None:
    assert retry_after_seconds({"retry-after": "soon, maybe"}) is None


def test_retry_after_seconds_falls_back_to_seconds_when_ms_is_garbage() -> None:
    assert retry_after_seconds({"retry-after-ms": "lots", "retry-after": "4"}) == 4.0


@pytest.mark.parametrize("headers", [None, {}, {"content-type": "application/json"}])
def test_retry_after_seconds_without_retry_headers_is_none(headers: dict[str, str] | None) -> None:
    assert retry_after_seconds(headers) is None


def _raised_from(cause: BaseException) -> BaseException:
    """LiteLLM's InternalServerError as it reaches the worker when the connection failed under it."""
    exc = litellm.InternalServerError(
        "OpenAIException - Connection error.", llm_provider=PROVIDER, model=MODEL
    )
    exc.__context__ = cause
    return exc


@pytest.mark.parametrize(
    "cause",
    [httpx.ConnectError("All connection attempts failed"), httpx.ReadError("server disconnected")],
)
def test_a_refused_or_dropped_connection_reported_as_500_is_a_connection_error(cause: Exception) -> None:
    error = classify(_raised_from(cause))

    assert error.retryable and error.kind == "connection"


def test_a_500_answer_stays_a_server_error() -> None:
    error = classify(litellm.InternalServerError("boom", llm_provider=PROVIDER, model=MODEL))

    assert error.kind == "server_error" and error.status_code == 500


def test_a_missing_api_key_reported_as_500_fails_at_once_as_auth() -> None:
    # What LiteLLM raises when the worker has no key for an OpenAI-compatible model: the SDK refused to
    # build the request. Retried as a server error, every job made num_retries + 1 attempts for nothing.
    missing = "Missing credentials. Please pass an `api_key` or set the `OPENAI_API_KEY` environment variable"
    exc = litellm.InternalServerError(f"OpenAIException - {missing}", llm_provider=PROVIDER, model=MODEL)
    exc.__context__ = openai.OpenAIError(missing)

    error = classify(exc)

    assert not error.retryable and error.kind == "auth"
    assert "Missing credentials" in error.message


def test_an_sdk_status_error_under_a_500_is_not_taken_for_a_refused_request() -> None:
    exc = litellm.InternalServerError("OpenAIException - boom", llm_provider=PROVIDER, model=MODEL)
    request = httpx.Request("POST", "http://provider/v1/chat/completions")
    exc.__context__ = openai.InternalServerError(
        "boom", response=httpx.Response(500, request=request), body=None
    )

    assert classify(exc).kind == "server_error"


# ---- a request larger than the limit itself --------------------------------------------------------

TOO_LARGE = (
    "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 60000, "
    "Requested 143000. The input or output tokens must be reduced in order to run successfully. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)


def test_openais_request_too_large_429_is_a_permanent_error_of_its_own_kind() -> None:
    exc = litellm.RateLimitError(
        TOO_LARGE, llm_provider=PROVIDER, model=MODEL, response=response(429, {"retry-after": "1"})
    )

    error = classify(exc)

    assert isinstance(error, PermanentProviderError)
    assert (error.retryable, error.kind, error.status_code) == (False, "request_too_large", 429)
    assert error.message.startswith(
        "request too large for gpt-4o: 143000 tokens requested, above the limit of 60000 tokens per min (TPM)"
    )


def test_a_request_too_large_answer_without_the_litellm_class_is_still_recognised() -> None:
    exc = litellm.APIError(429, TOO_LARGE, llm_provider=PROVIDER, model=MODEL)

    assert classify(exc).kind == "request_too_large"


def test_an_ordinary_tpm_429_stays_a_retryable_rate_limit() -> None:
    message = (
        "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 60000, "
        "Used 59000, Requested 2000. Please try again in 1s."
    )
    exc = litellm.RateLimitError(message, llm_provider=PROVIDER, model=MODEL, response=response(429))

    assert isinstance(classify(exc), RateLimitedError)
