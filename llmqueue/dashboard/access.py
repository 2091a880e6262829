"""Who may read the dashboard and who may act on it.

Actions (cancel, retry) need the dashboard's token in an ``Authorization: Bearer <token>`` header, never
a cookie, so another site's page cannot make a browser send it; a request that states another origin
(``Origin``, ``Sec-Fetch-Site: cross-site``) is refused as well. Reads are open without the token only
when no token was set by the user and both the caller and the ``Host`` it asked for are this machine's
loopback (the ``Host`` check keeps a DNS-rebinding page out); with a token set, every ``/api`` read needs
it too, and the server may listen beyond loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

TOKEN_ENV = "LLMQUEUE_DASHBOARD_TOKEN"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Access:
    """The dashboard's token and whether reads need it (they do when the user chose the token)."""

    token: str
    reads_need_token: bool

    @classmethod
    def from_token(cls, token: str | None) -> Access:
        """The user's token (``LLMQUEUE_DASHBOARD_TOKEN``), or a random one for this run when None."""
        if token:
            return cls(token=token, reads_need_token=True)
        return cls(token=secrets.token_urlsafe(24), reads_need_token=False)

    def has_token(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries this token (compared in constant time)."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        return hmac.compare_digest(authorization.removeprefix("Bearer ").strip(), self.token)


def is_loopback_address(address: str | None) -> bool:
    """Whether a peer's IP address is this machine's loopback (127.0.0.0/8, ::1)."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def host_name(host: str | None) -> str:
    """The name part of a ``Host`` header or URL netloc (``[::1]:8787`` -> ``::1``), lower case."""
    if not host:
        return ""
    return (urlsplit(f"//{host}").hostname or "").lower()


def is_loopback_host(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, ``127.0.0.1``, ``[::1]``)."""
    name = host_name(host)
    return name in LOOPBACK_NAMES or is_loopback_address(name)


def cross_site(*, origin: str | None, fetch_site: str | None, host: str | None) -> bool:
    """Whether a request says it comes from another site's page.

    ``Origin`` (sent by browsers on every POST) must name the host the request was sent to;
    ``Sec-Fetch-Site`` must not be ``cross-site`` or ``same-site``. A client that sends neither (curl, a
    script) is not a browser page and is judged by its token alone.
    """
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    if origin is None:
        return False
    if origin == "null":
        return True
    return urlsplit(origin).netloc.lower() != (host or "").lower()
