"""Sentinel URLs and settings read into connections (clients connect lazily: only the last test needs
servers, a master, a replica and three sentinels)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from llmqueue.connection import arq_redis_settings, parse_sentinel_url, redis_client
from llmqueue.errors import ConfigError
from llmqueue.settings import Settings
from tests.support.sentinel import sentinel_set


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_data_nodes_credentials() -> None:
    url = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/llmq/2?sentinel_password=sp"
    address = parse_sentinel_url(url)
    assert address.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)]
    assert address.service == "llmq"
    assert {k: address.options[k] for k in ("username", "password", "db")} == {
        "username": "app",
        "password": "s3cret",
        "db": 2,
    }
    assert address.sentinel_options == {"password": "sp"}


def test_rediss_sentinel_uses_tls_for_the_sentinels_and_the_data_nodes() -> None:
    address = parse_sentinel_url("rediss+sentinel://h:1/svc?ssl_cert_reqs=required")
    assert address.options["ssl"] is True and address.sentinel_options["ssl"] is True
    assert address.options["db"] == 0


def test_a_sentinel_client_asks_for_the_master_of_the_service() -> None:
    client = redis_client("redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc/1")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "svc" and pool.is_master and pool.connection_kwargs["db"] == 1


def test_workers_get_arqs_sentinel_settings() -> None:
    settings = arq_redis_settings("redis+sentinel://:pw@a:1,b:2/svc/3")
    assert settings.sentinel and settings.sentinel_master == "svc"
    assert (settings.host, settings.database, settings.password) == ([("a", 1), ("b", 2)], 3, "pw")


def test_options_workers_cannot_apply_through_sentinel_are_refused_with_the_password_masked() -> None:
    with pytest.raises(ConfigError, match=r"sets password, which workers cannot apply") as caught:
        arq_redis_settings("redis+sentinel://a:1/svc?sentinel_password=hunter22")
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://a:1", "redis+sentinel://a:1/svc/0/extra", "redis+sentinel://a:port/svc"],
)
def test_a_sentinel_url_without_a_service_or_with_a_bad_address_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="Sentinel URL"):
        parse_sentinel_url(url)


def test_sentinel_settings_turn_the_redis_url_into_a_sentinel_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://app:pw@ignored:6380/4?ssl_cert_reqs=none")
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, s2:26379")
    monkeypatch.setenv("REDIS_SENTINEL_SERVICE", "llmq")
    url = Settings().redis_url.get_secret_value()
    assert url == "rediss+sentinel://app:pw@s1:26379,s2:26379/llmq/4?ssl_cert_reqs=none"
    assert Settings(redis_sentinels=["s3:1"], redis_sentinel_service="m").redis_url.get_secret_value() == (
        "rediss+sentinel://app:pw@s3:1/m/4?ssl_cert_reqs=none"
    )


def test_sentinels_without_a_service_are_refused() -> None:
    with pytest.raises(ValueError, match="set together"):
        Settings(redis_sentinels=["s1:26379"])


def test_a_sentinel_url_is_a_valid_redis_url_setting() -> None:
    url = "redis+sentinel://a:1,b:2/svc"
    assert Settings(redis_url=url).redis_url.get_secret_value() == url  # type: ignore[arg-type]


async def test_a_sentinel_client_with_few_connections_makes_commands_wait_for_one(tmp_path: Path) -> None:
    with sentinel_set(tmp_path) as servers:
        client = redis_client(servers.url, max_connections=2)
        try:
            assert sum(await asyncio.gather(*(client.incr("counter") for _ in range(50)))) == 50 * 51 // 2
            assert await client.get("counter") == b"50"
            pool = client.connection_pool
            assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
        finally:
            await client.aclose()
