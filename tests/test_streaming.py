"""Streaming to the producer: a job with ``params.stream`` is streamed by the worker, read with
``JobHandle.stream()`` while the provider is still sending."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from llmqueue.producer import MAX_CONNECTIONS, JobHandle, Producer
from llmqueue.settings import Settings
from llmqueue.simulator.server import ProviderConfig, RunningProvider, run_provider
from tests.support.settings import TEST_API_KEY, make_settings, running_worker

CHUNK_DELAY = 0.05
WORDS = 20


@pytest.fixture
async def slow_provider() -> AsyncIterator[RunningProvider]:
    """A provider sending a streamed answer one word each ``CHUNK_DELAY`` seconds."""
    async with run_provider(ProviderConfig(api_key=TEST_API_KEY, stream_chunk_delay=CHUNK_DELAY)) as running:
        yield running


async def test_deltas_reach_the_stream_while_the_provider_sends_and_add_up_to_the_result(
    redis_url: str, slow_provider: RunningProvider
) -> None:
    settings = make_settings(redis_url, slow_provider.base_url)
    prompt = " ".join(f"word{n}" for n in range(WORDS))
    job = {"messages": [{"role": "user", "content": prompt}], "params": {"stream": True}}
    async with Producer(settings) as producer, running_worker(settings):
        handle = await producer.submit(job)
        arrivals: list[tuple[float, str, int]] = []
        async for event in handle.stream():
            assert event.kind == "delta"
            arrivals.append((time.monotonic(), event.text, slow_provider.stats.in_flight))
        result = await handle.result(timeout=10)
    assert result.status == "succeeded"
    assert "".join(text for _, text, _ in arrivals) == result.text == f"echo: {prompt}"
    # The first delta came while the provider was still sending, and later ones kept coming.
    assert arrivals[0][2] == 1
    assert len(arrivals) >= 5
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread > WORDS * CHUNK_DELAY / 2
    assert result.usage is not None and result.usage.completion_tokens > 0
    # The first delta reached the reader soon after the provider sent it (same clock: one process).
    first_sent = slow_provider.stats.stream_chunk_times[0]
    assert arrivals[0][0] - first_sent < 0.25


async def test_a_job_not_streamed_ends_its_reader_with_nothing(
    settings: Settings, producer: Producer
) -> None:
    async with running_worker(settings):
        handle = await producer.submit({"messages": [{"role": "user", "content": "hi"}]})
        assert [event async for event in handle.stream()] == []
        assert (await handle.result(timeout=10)).text == "echo: hi"


async def test_a_stream_cut_mid_way_is_retried_and_the_reader_sees_the_restart(
    redis_url: str, slow_provider: RunningProvider
) -> None:
    settings = make_settings(redis_url, slow_provider.base_url)
    prompt = " ".join(f"word{n}" for n in range(WORDS))
    slow_provider.broken_next(1, "cut_stream")
    job = {"messages": [{"role": "user", "content": prompt}], "params": {"stream": True}}
    async with Producer(settings) as producer, running_worker(settings):
        handle = await producer.submit(job)
        events = [event async for event in handle.stream()]
        result = await handle.result(timeout=20)
    kinds = [event.kind for event in events]
    assert kinds.count("restart") == 1, kinds
    restart = kinds.index("restart")
    before = "".join(event.text for event in events[:restart])
    after = "".join(event.text for event in events[restart + 1 :])
    assert before and result.text is not None and result.text.startswith(before)
    assert after == result.text == f"echo: {prompt}"
    assert result.status == "succeeded" and result.attempts == 2
    assert slow_provider.stats.requests == 2


async def test_more_streams_read_at_once_than_the_producer_has_connections_all_complete(
    redis_url: str, slow_provider: RunningProvider
) -> None:
    settings = make_settings(redis_url, slow_provider.base_url)
    count = MAX_CONNECTIONS + 4
    jobs = [
        {"messages": [{"role": "user", "content": f"reader {n} says hi"}], "params": {"stream": True}}
        for n in range(count)
    ]

    async def read(handle: JobHandle) -> str:
        return "".join([event.text async for event in handle.stream()])

    async with Producer(settings) as producer, running_worker(settings):
        handles = await producer.submit_many(jobs)
        texts = await asyncio.wait_for(asyncio.gather(*(read(h) for h in handles)), timeout=30)
        results = [await h.result(timeout=10) for h in handles]
    assert texts == [r.text for r in results] == [f"echo: reader {n} says hi" for n in range(count)]
