"""Sentinel URLs and settings read into connections (clients connect lazily). The tests that connect
share one set of servers: a master, a replica and three sentinels, the data nodes and the sentinels
each with their own password (``requirepass``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool, SentinelManagedSSLConnection

from llmqueue.connection import arq_redis_settings, parse_sentinel_url, redis_client, where
from llmqueue.errors import ConfigError
from llmqueue.producer import Producer
from llmqueue.queue import payload
from llmqueue.settings import Settings
from llmqueue.simulator.server import RunningProvider
from llmqueue.worker import connect
from tests.support.reliability import child_env, worker_env, worker_processes
from tests.support.sentinel import SentinelSet, sentinel_set
from tests.support.settings import TEST_API_KEY, make_settings
from tests.support.tls import certificates


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


def test_options_arqs_own_worker_cannot_apply_through_sentinel_are_refused_with_the_password_masked() -> None:
    with pytest.raises(ConfigError, match=r"sets password, which arq's own worker cannot apply") as caught:
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


def test_tls_and_passwords_reach_the_sentinels_and_the_data_nodes_each_their_own() -> None:
    url = (
        "rediss+sentinel://app:data-pw@127.0.0.1:1/svc/2"
        "?sentinel_password=sentinel-pw&ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    )
    client = redis_client(url)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.connection_class is SentinelManagedSSLConnection
    data = pool.connection_kwargs
    assert (data["username"], data["password"], data["db"]) == ("app", "data-pw", 2)
    assert (data["ssl_ca_certs"], data["ssl_cert_reqs"]) == ("/etc/ca.pem", "required")
    for sentinel in pool.sentinel_manager.sentinels:
        own = sentinel.connection_pool
        assert own.connection_class is SSLConnection
        assert own.connection_kwargs["password"] == "sentinel-pw"
        assert own.connection_kwargs.get("username") is None  # the data nodes' user is not theirs
        assert own.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"


def test_worker_log_lines_name_the_service_and_sentinels_without_passwords() -> None:
    shown = where("redis+sentinel://:pw@a:1,b:2/llmq/3?sentinel_password=spw")
    assert shown == "the master of llmq (sentinels a:1,b:2)/3"
    assert where("redis://:pw@db.example:6380/2") == "db.example:6380/2"


def _cli(command: str, *, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``llmqueue COMMAND`` run as a user would, given only ``REDIS_URL``."""
    return subprocess.run(
        [sys.executable, "-m", "llmqueue", command],
        env=child_env(REDIS_URL=redis_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    with sentinel_set(
        tmp_path_factory.mktemp("guarded"), password="data-s3cret", sentinel_password="sentinel-s3cret"
    ) as servers:
        yield servers


async def test_a_sentinel_client_with_few_connections_makes_commands_wait_for_one(
    guarded: SentinelSet,
) -> None:
    client = redis_client(guarded.url, max_connections=2)
    try:
        assert sum(await asyncio.gather(*(client.incr("counter") for _ in range(50)))) == 50 * 51 // 2
        assert await client.get("counter") == b"50"
        pool = client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
    finally:
        await client.aclose()


@pytest.mark.parametrize("wrong", ["sentinel_password=nope", "no sentinel password"])
async def test_without_the_sentinels_password_no_master_is_found(guarded: SentinelSet, wrong: str) -> None:
    url = guarded.url.replace("sentinel_password=sentinel-s3cret", wrong if "=" in wrong else "")
    client = redis_client(url.rstrip("?"))
    try:
        with pytest.raises(MasterNotFoundError):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_worker_connects_through_sentinels_that_need_passwords(guarded: SentinelSet) -> None:
    redis = await connect(Settings(redis_url=guarded.url))  # type: ignore[arg-type]
    try:
        assert isinstance(redis, ArqRedis) and await redis.ping()
        assert redis.job_serializer is payload.serialize
        assert (await redis.info("server"))["tcp_port"] == guarded.master_port_now()
    finally:
        await redis.aclose()


@pytest.mark.slow
async def test_a_worker_process_a_producer_and_the_cli_share_a_sentinel_url_with_passwords(
    guarded: SentinelSet, provider: RunningProvider, tmp_path: Path
) -> None:
    env = worker_env(guarded.url, provider.base_url, TEST_API_KEY)
    with worker_processes(env, tmp_path) as workers:
        (worker,) = await workers.start_ready(1)
        async with Producer(make_settings(guarded.url, provider.base_url)) as producer:
            handle = await producer.submit({"messages": [{"role": "user", "content": "behind passwords"}]})
            result = await handle.result(timeout=60)
        health = _cli("health", redis_url=guarded.url, cwd=tmp_path)
    assert result.status == "succeeded", result
    assert health.returncode == 0 and "1 live worker(s)" in health.stdout, health.stdout + health.stderr
    for secret in ("data-s3cret", "sentinel-s3cret"):
        assert secret not in worker.output() + health.stdout + health.stderr


@pytest.fixture(scope="module")
def over_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """The set on TLS only (this redis-server is built with TLS), with a CA trusted only through the URL."""
    workdir = tmp_path_factory.mktemp("tls")
    with sentinel_set(workdir, password="data-s3cret", tls=certificates(workdir)) as servers:
        yield servers


async def test_producers_workers_and_the_cli_reach_the_master_through_sentinels_over_tls(
    over_tls: SentinelSet, tmp_path: Path
) -> None:
    assert over_tls.url.startswith("rediss+sentinel://") and "ssl_ca_certs=" in over_tls.url
    untrusted = redis_client(over_tls.url.split("?")[0])  # without the CA no sentinel is trusted
    with pytest.raises(MasterNotFoundError):
        await untrusted.ping()
    await untrusted.aclose()
    client = redis_client(over_tls.url)
    worker_side = await connect(Settings(redis_url=over_tls.url))  # type: ignore[arg-type]
    try:
        await client.set("over-tls", "yes")
        assert await worker_side.get("over-tls") == b"yes"
        assert await worker_side.config_get("port") == {"port": "0"}  # no plain port: TLS only
        assert (await worker_side.config_get("tls-port"))["tls-port"] == str(over_tls.master_port)
    finally:
        await client.aclose()
        await worker_side.aclose()
    listing = _cli("workers", redis_url=over_tls.url, cwd=tmp_path)
    assert listing.returncode == 0 and "no live workers" in listing.stderr, listing.stdout + listing.stderr
