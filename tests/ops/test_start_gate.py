"""A gated worker, as ``llmqueue run`` starts them before its file is checked: once started up it takes
no job until the line ``open`` comes on its standard input; the end of that input stops it with nothing
taken."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from redis import Redis

from llmqueue.ops.processes import start_worker, stop_processes
from llmqueue.ops.start_gate import close_gate, open_gate
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

AT_THE_GATE = "waits for its run to let it take jobs"


@pytest.fixture
def provider() -> Iterator[ProviderProcess]:
    """The simulated provider in a process of its own (the test blocks reading the worker's log)."""
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as running:
        yield running


@pytest.fixture
def gated_worker(redis_url: str, provider: ProviderProcess) -> Iterator[subprocess.Popen[bytes]]:
    """``llmqueue worker --gated -v``, returned once it says it waits at its gate."""
    env = {
        "REDIS_URL": redis_url,
        "LLM_MODEL": "openai/sim-model",
        "LLM_BASE_URL": provider.base_url,
        "LLM_API_KEY": TEST_API_KEY,
        "WORKER_POLL_DELAY": "0.01",
    }
    process = start_worker(env, args=["--gated", "-v"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        log: list[str] = []
        while not any(AT_THE_GATE in line for line in log):
            line = process.stderr.readline().decode(errors="replace")
            if not line:
                raise AssertionError(f"the worker exited before its gate: {''.join(log)}")
            log.append(line)
        yield process
    finally:
        stop_processes([process], timeout=20)


async def test_a_gated_worker_takes_a_queued_job_only_once_its_gate_opens(
    redis_url: str, provider: ProviderProcess, gated_worker: subprocess.Popen[bytes]
) -> None:
    settings = make_settings(redis_url, provider.base_url)
    async with Producer(settings) as producer:
        handle = await producer.submit({"messages": [{"role": "user", "content": "hi"}]})
        assert provider.stats()["requests"] == 0
        assert Redis.from_url(redis_url).zcard(settings.worker.queue_name) == 1

        open_gate(gated_worker)
        result = await handle.result(timeout=60)

    assert result.status == "succeeded"
    assert provider.stats()["requests"] == 1


async def test_a_gated_worker_whose_input_ends_stops_having_taken_nothing(
    redis_url: str, provider: ProviderProcess, gated_worker: subprocess.Popen[bytes]
) -> None:
    settings = make_settings(redis_url, provider.base_url)
    async with Producer(settings) as producer:
        await producer.submit({"messages": [{"role": "user", "content": "hi"}]})

    close_gate(gated_worker)  # what the death of its run does too

    assert gated_worker.wait(timeout=60) == 0
    assert provider.stats()["requests"] == 0
    assert Redis.from_url(redis_url).zcard(settings.worker.queue_name) == 1


def test_a_gated_worker_whose_input_is_not_a_pipe_refuses_to_start(redis_url: str) -> None:
    process = start_worker({"REDIS_URL": redis_url}, args=["--gated"], stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 2
    assert b"--gated needs its standard input to be a pipe" in stderr
