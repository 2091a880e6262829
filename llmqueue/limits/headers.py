"""What a provider says about its own rate limits, read from the response headers LiteLLM passes on.

Pure code, no I/O. Two header families are understood:

- OpenAI and the providers that copy it (Azure OpenAI, Groq, most OpenAI-compatible servers):
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; ``limit`` is per minute, ``reset`` a
  duration such as ``17ms``, ``1s``, ``6m0s`` or ``1h2m3.5s``.
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``;
  ``reset`` is an RFC 3339 time. ``tokens`` is the most restrictive token limit in effect.

LiteLLM hands the provider's headers back under their own names and again prefixed ``llm_provider-``
(``response._hidden_params["additional_headers"]``); on an exception they are on
``exc.litellm_response_headers`` or ``exc.response.headers``. :func:`response_headers` and
:func:`exception_headers` find them, :func:`parse_rate_limit_headers` reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

PROVIDER_PREFIX = "llm_provider-"

Family = Literal["openai", "anthropic"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass(frozen=True)
class Reading:
    """One limit as the provider states it: ``limit`` per minute, ``remaining`` now, ``reset`` in seconds.

    Each is None when the provider did not send it.
    """

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None


@dataclass(frozen=True)
class ProviderLimits:
    """The rate-limit headers of one response (success or 429)."""

    family: Family
    requests: Reading | None = None
    tokens: Reading | None = None
    input_tokens: Reading | None = None
    output_tokens: Reading | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"family": self.family}
        for name in ("requests", "tokens", "input_tokens", "output_tokens"):
            reading = getattr(self, name)
            if reading is not None:
                data[name] = {"limit": reading.limit, "remaining": reading.remaining, "reset": reading.reset}
        return data


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI reset duration (``"17ms"``, ``"1s"``, ``"6m0s"``, ``"1h2m3.5s"``, ``"0.5"``).

    None when the text is not a duration.
    """
    text = text.strip().lower()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def parse_time(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` until the RFC 3339 time ``text`` (never negative); None if unreadable."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None or now.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def parse_rate_limit_headers(headers: Mapping[str, str], now: datetime) -> ProviderLimits | None:
    """The rate limits stated in ``headers`` (names in any case, ``llm_provider-`` prefix or not).

    ``now`` (timezone-aware) turns Anthropic's reset times into seconds. None when no rate-limit header
    of either family is present. Values that do not parse are left out, never guessed. Anthropic's own
    names are read first: LiteLLM also copies some of them to ``x-ratelimit-*`` names.
    """
    lowered = _plain_names(headers)
    anthropic = {
        kind: _reading(
            lowered.get(f"anthropic-ratelimit-{kind}-limit"),
            lowered.get(f"anthropic-ratelimit-{kind}-remaining"),
            _maybe(lambda text: parse_time(text, now), lowered.get(f"anthropic-ratelimit-{kind}-reset")),
        )
        for kind in ("requests", "tokens", "input-tokens", "output-tokens")
    }
    if any(anthropic.values()):
        return ProviderLimits(
            "anthropic",
            requests=anthropic["requests"],
            tokens=anthropic["tokens"],
            input_tokens=anthropic["input-tokens"],
            output_tokens=anthropic["output-tokens"],
        )
    openai = {
        kind: _reading(
            lowered.get(f"x-ratelimit-limit-{kind}"),
            lowered.get(f"x-ratelimit-remaining-{kind}"),
            _maybe(parse_duration, lowered.get(f"x-ratelimit-reset-{kind}")),
        )
        for kind in ("requests", "tokens")
    }
    if any(openai.values()):
        return ProviderLimits("openai", requests=openai["requests"], tokens=openai["tokens"])
    return None


def response_headers(response: Any) -> dict[str, str]:
    """The provider's headers LiteLLM kept on a response (``_hidden_params["additional_headers"]``)."""
    hidden = getattr(response, "_hidden_params", None)
    found: Any = None
    if isinstance(hidden, Mapping):
        found = hidden.get("additional_headers")
    if not found:
        found = getattr(response, "_response_headers", None)
    return _as_dict(found)


def exception_headers(exc: BaseException) -> dict[str, str]:
    """The provider's headers on a LiteLLM exception (a 429 among them), or ``{}``."""
    found: Any = getattr(exc, "litellm_response_headers", None)
    if not found:
        found = getattr(getattr(exc, "response", None), "headers", None)
    return _as_dict(found)


def _plain_names(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased names; the raw ``llm_provider-`` copy wins over LiteLLM's re-exported one."""
    plain: dict[str, str] = {}
    prefixed: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(PROVIDER_PREFIX):
            prefixed[lower.removeprefix(PROVIDER_PREFIX)] = str(value)
        else:
            plain[lower] = str(value)
    return {**plain, **prefixed}


def _reading(limit: str | None, remaining: str | None, reset: float | None) -> Reading | None:
    reading = Reading(limit=_number(limit), remaining=_number(remaining), reset=reset)
    if reading.limit is not None and reading.limit <= 0:
        reading = Reading(limit=None, remaining=reading.remaining, reset=reading.reset)
    if reading.limit is None and reading.remaining is None and reading.reset is None:
        return None
    return reading


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value >= 0 and value != float("inf") else None


def _maybe(parse: Any, text: str | None) -> float | None:
    return None if text is None else parse(text)


def _as_dict(headers: Any) -> dict[str, str]:
    if not headers:
        return {}
    try:
        return {str(name): str(value) for name, value in headers.items()}
    except AttributeError:
        return {}
