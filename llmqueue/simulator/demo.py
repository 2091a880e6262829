"""The simulated provider as the demo uses it: ``llmqueue run --simulate-provider``, a key for no cost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig

SIMULATED_MODEL = "openai/sim-model"
# Not a secret: the simulated provider accepts any key, LiteLLM just insists on one.
SIMULATED_KEY = "sk-simulated-provider"


@contextmanager
def demo_provider(
    *, rpm: float | None, tpm: float | None, model: str | None, latency: float = 0.2
) -> Iterator[dict[str, str]]:
    """Serve the simulated provider in its own process; yields the worker environment that points at it.

    The provider plays a key whose limits are exactly ``rpm``/``tpm`` (any, when None) for each model, as
    OpenAI's are and as ``--rpm``/``--tpm`` mean them, and states them in OpenAI's rate-limit headers, so
    the workers learn them even when no limit is given.
    """
    config = ProviderConfig(rpm=rpm, tpm=tpm, latency=latency, latency_jitter=0.5, limits_per_model=True)
    with ProviderProcess(config) as provider:
        yield {
            "LLM_MODEL": model or SIMULATED_MODEL,
            "LLM_BASE_URL": provider.base_url,
            "LLM_API_KEY": SIMULATED_KEY,
        }
