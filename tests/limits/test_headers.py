"""Rate-limit headers of each provider family, read from recorded header sets (pure, no I/O)."""

from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import pytest

from llmqueue.limits.headers import (
    ProviderLimits,
    Reading,
    exception_headers,
    parse_duration,
    parse_rate_limit_headers,
    parse_time,
    response_headers,
)

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

# OpenAI's documented example (platform.openai.com/docs/guides/rate-limits), as httpx hands it over.
OPENAI = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}
# Groq: the same names, fractional durations.
GROQ = {
    "x-ratelimit-limit-requests": "14400",
    "x-ratelimit-limit-tokens": "18000",
    "x-ratelimit-remaining-requests": "14370",
    "x-ratelimit-remaining-tokens": "17997",
    "x-ratelimit-reset-requests": "2m59.56s",
    "x-ratelimit-reset-tokens": "7.66s",
}
# Azure OpenAI: what is left, no limits.
AZURE = {"x-ratelimit-remaining-requests": "119", "x-ratelimit-remaining-tokens": "119800"}
# Anthropic, as LiteLLM returns it in _hidden_params["additional_headers"]: the provider's names under
# llm_provider-, and some copied to OpenAI's names.
ANTHROPIC_VIA_LITELLM = {
    "llm_provider-anthropic-ratelimit-requests-limit": "50",
    "llm_provider-anthropic-ratelimit-requests-remaining": "49",
    "llm_provider-anthropic-ratelimit-requests-reset": "2026-12-01T12:00:01Z",
    "llm_provider-anthropic-ratelimit-tokens-limit": "48000",
    "llm_provider-anthropic-ratelimit-tokens-remaining": "47000",
    "llm_provider-anthropic-ratelimit-tokens-reset": "2026-12-01T12:00:02.500Z",
    "llm_provider-anthropic-ratelimit-input-tokens-limit": "40000",
    "llm_provider-anthropic-ratelimit-input-tokens-remaining": "39500",
    "llm_provider-anthropic-ratelimit-input-tokens-reset": "2026-12-01T12:00:01Z",
    "llm_provider-anthropic-ratelimit-output-tokens-limit": "8000",
    "llm_provider-anthropic-ratelimit-output-tokens-remaining": "7500",
    "llm_provider-anthropic-ratelimit-output-tokens-reset": "2026-12-01T12:00:04Z",
    "x-ratelimit-limit-requests": "50",
    "x-ratelimit-remaining-requests": "49",
    "x-ratelimit-limit-tokens": "48000",
    "x-ratelimit-remaining-tokens": "47000",
    "llm_provider-request-id": "req_01",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("17ms", 0.017),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("2m59.56s", 179.56),
        ("1h2m3.5s", 3723.5),
        ("0.012s", 0.012),
        ("0s", 0.0),
        ("7", 7.0),
    ],
)
def test_openai_reset_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "5s later", "-1s"])
def test_unreadable_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_anthropic_reset_time_is_seconds_from_now_and_never_negative() -> None:
    assert parse_time("2026-12-01T12:00:02.500Z", NOW) == pytest.approx(2.5)
    assert parse_time("2026-12-01T11:59:00+00:00", NOW) == 0.0
    assert parse_time("tomorrow", NOW) is None
    assert parse_time("2026-12-01T12:00:02", NOW) is None  # no time zone: not RFC 3339


def test_openai_headers() -> None:
    said = parse_rate_limit_headers(OPENAI, NOW)
    assert said == ProviderLimits(
        "openai",
        requests=Reading(limit=60, remaining=59, reset=1.0),
        tokens=Reading(limit=150000, remaining=149984, reset=360.0),
    )


def test_groq_headers() -> None:
    said = parse_rate_limit_headers(GROQ, NOW)
    assert said is not None and said.family == "openai"
    assert said.tokens == Reading(limit=18000, remaining=17997, reset=pytest.approx(7.66))
    assert said.requests is not None and said.requests.reset == pytest.approx(179.56)


def test_azure_headers_state_what_is_left_but_no_limit() -> None:
    said = parse_rate_limit_headers(AZURE, NOW)
    assert said == ProviderLimits("openai", requests=Reading(remaining=119), tokens=Reading(remaining=119800))


def test_anthropic_headers_through_litellm_are_read_as_anthropic_with_input_and_output_limits() -> None:
    said = parse_rate_limit_headers(ANTHROPIC_VIA_LITELLM, NOW)
    assert said == ProviderLimits(
        "anthropic",
        requests=Reading(limit=50, remaining=49, reset=1.0),
        tokens=Reading(limit=48000, remaining=47000, reset=2.5),
        input_tokens=Reading(limit=40000, remaining=39500, reset=1.0),
        output_tokens=Reading(limit=8000, remaining=7500, reset=4.0),
    )


def test_the_raw_provider_copy_wins_and_names_are_case_insensitive() -> None:
    headers = {"X-RateLimit-Limit-Requests": "99", "llm_provider-x-ratelimit-limit-requests": "60"}
    said = parse_rate_limit_headers(headers, NOW)
    assert said is not None and said.requests == Reading(limit=60)


def test_headers_without_rate_limits_are_none() -> None:
    assert parse_rate_limit_headers({"content-type": "application/json", "retry-after": "3"}, NOW) is None
    assert parse_rate_limit_headers({}, NOW) is None


def test_bad_values_are_left_out_not_guessed() -> None:
    headers = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-3",
        "x-ratelimit-limit-tokens": "0",
        "x-ratelimit-remaining-tokens": "10",
        "x-ratelimit-reset-tokens": "whenever",
    }
    said = parse_rate_limit_headers(headers, NOW)
    assert said == ProviderLimits("openai", requests=None, tokens=Reading(remaining=10))


def test_headers_are_found_on_a_litellm_response_and_on_its_exceptions() -> None:
    response = SimpleNamespace(_hidden_params={"additional_headers": dict(OPENAI)})
    assert response_headers(response) == OPENAI
    assert response_headers(SimpleNamespace()) == {}

    on_litellm = SimpleNamespace(litellm_response_headers=httpx.Headers(OPENAI))
    assert exception_headers(on_litellm)["x-ratelimit-limit-requests"] == "60"  # type: ignore[arg-type]
    request = httpx.Request("POST", "http://provider/v1/chat/completions")
    on_response = SimpleNamespace(response=httpx.Response(429, headers=AZURE, request=request))
    assert exception_headers(on_response)["x-ratelimit-remaining-tokens"] == "119800"  # type: ignore[arg-type]
    assert exception_headers(ValueError("no headers")) == {}
