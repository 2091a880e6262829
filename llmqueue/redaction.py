"""Scrub secrets (API keys, passwords in URLs) from text before it is logged or stored."""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I
)
_QUERY_PASSWORD = re.compile(r"(?P<name>[?&](?:sentinel_)?password=)[^&#\s]+", re.I)
_KEY_LIKE = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}")
MASK = "***"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret, URL password and OpenAI-style key replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KEY_LIKE.sub(MASK, text)


def redact_url(url: str) -> str:
    """A URL safe to print: the password part (and a ``password``/``sentinel_password`` query
    parameter) replaced by ``***``."""
    url = _QUERY_PASSWORD.sub(lambda m: f"{m['name']}{MASK}", url)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)


_PIPELINE_PREFIX = " of pipeline caused error: "
REDIS_ERROR_CHARS = 300


def redis_error_line(exc: BaseException) -> str:
    """A Redis error as one short line without the command that caused it.

    redis-py writes a failed pipeline command, with all its arguments (job payloads, prompts), into the
    exception's message; only the error Redis sent is kept, at most ``REDIS_ERROR_CHARS`` characters.
    """
    message = str(exc.args[0]) if exc.args else str(exc)
    if message.startswith("Command # ") and _PIPELINE_PREFIX in message:
        message = message.rpartition(_PIPELINE_PREFIX)[2].strip("(),'\" ")
    message = " ".join(redact(message).split())
    if len(message) > REDIS_ERROR_CHARS:
        message = message[: REDIS_ERROR_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {message}"
