"""Who may read and act: the token, loopback, and cross-site checks, as tables."""

from __future__ import annotations

import pytest

from llmqueue.dashboard.access import Access, cross_site, is_loopback_address, is_loopback_host


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer wrong", False),
        ("s3cret", False),
        ("Basic s3cret", False),
        ("", False),
        (None, False),
    ],
)
def test_has_token_accepts_only_the_bearer_token(header: str | None, allowed: bool) -> None:
    assert Access(token="s3cret", reads_need_token=True).has_token(header) is allowed


def test_a_token_from_the_user_closes_reads_and_a_generated_one_does_not() -> None:
    assert Access.from_token("mine") == Access(token="mine", reads_need_token=True)
    generated = Access.from_token(None)
    assert not generated.reads_need_token
    assert len(generated.token) >= 32
    assert generated.token != Access.from_token(None).token


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("10.0.0.2", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_address(address: str | None, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8787", True),
        ("localhost:8787", True),
        ("LOCALHOST", True),
        ("[::1]:8787", True),
        ("evil.example:8787", False),  # a DNS-rebinding page asks for its own name
        ("127.0.0.1.evil.example", False),
        (None, False),
    ],
)
def test_is_loopback_host(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("origin", "fetch_site", "host", "refused"),
    [
        (None, None, "127.0.0.1:8787", False),  # curl, a script
        ("http://127.0.0.1:8787", "same-origin", "127.0.0.1:8787", False),
        ("http://127.0.0.1:8787", None, "127.0.0.1:8787", False),
        ("http://evil.example", "cross-site", "127.0.0.1:8787", True),
        ("http://evil.example", None, "127.0.0.1:8787", True),
        ("http://localhost:8787", None, "127.0.0.1:8787", True),
        (None, "cross-site", "127.0.0.1:8787", True),
        (None, "same-site", "127.0.0.1:8787", True),
        ("null", None, "127.0.0.1:8787", True),  # a sandboxed frame or a file:// page
    ],
)
def test_cross_site(origin: str | None, fetch_site: str | None, host: str, refused: bool) -> None:
    assert cross_site(origin=origin, fetch_site=fetch_site, host=host) is refused
