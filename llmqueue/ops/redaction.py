"""Scrub secrets (API keys, passwords in URLs) from text before it is logged or stored."""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I
)
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
    """A URL safe to print: the password part replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
