"""The simulated provider as the demo uses it: ``llmqueue run --simulate-provider``, a key for no cost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

SIMULATED_MODEL = "openai/sim-model"
# Not a secret: the simulated provider accepts any key, LiteLLM just insists on one.
SIMULATED_KEY = "sk-simulated-provider"
# The simulated provider plays a key whose limits are this much above --rpm/--tpm: the README's advice
# is to give the workers limits about 2% below the key's.
SIMULATED_HEADROOM = 0.02


def simulated_limit(workers_limit: float | None) -> float | None:
    """The simulated provider's limit for workers given ``workers_limit``: the key they are set just under."""
    return None if workers_limit is None else workers_limit / (1 - SIMULATED_HEADROOM)


@contextmanager
def demo_provider(
    *, rpm: float | None, tpm: float | None, model: str | None, latency: float = 0.2
) -> Iterator[dict[str, str]]:
    """Serve the simulated provider in its own process; yields the worker environment that points at it."""
    config = ProviderConfig(
        rpm=simulated_limit(rpm), tpm=simulated_limit(tpm), latency=latency, latency_jitter=0.5
    )
    with ProviderProcess(config) as provider:
        yield {
            "LLM_MODEL": model or SIMULATED_MODEL,
            "LLM_BASE_URL": provider.base_url,
            "LLM_API_KEY": SIMULATED_KEY,
        }
