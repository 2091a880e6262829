"""The simulated provider refuses a request larger than its tokens-per-minute limit as OpenAI does:
a 429 "Request too large … Limit …, Requested …", without retry-after, whatever its buckets hold."""

from __future__ import annotations

import math

import litellm
import pytest

from llmqueue.simulator.limits import RateLimits
from llmqueue.simulator.server import ProviderConfig, run_provider

litellm.suppress_debug_info = True


def test_a_request_above_the_tpm_limit_is_too_large_even_with_full_buckets() -> None:
    limits = RateLimits(rpm=None, tpm=600, window_seconds=60, now=0.0)

    refusal = limits.too_large(601)

    assert refusal is not None and refusal.too_large
    assert (refusal.kind, refusal.limit_per_minute, refusal.requested) == ("tokens", 600, 601)
    assert refusal.wait_seconds == math.inf


@pytest.mark.parametrize("tpm", [600, None])
def test_a_request_within_the_tpm_limit_or_without_one_is_not_too_large(tpm: float | None) -> None:
    assert RateLimits(rpm=None, tpm=tpm, window_seconds=60, now=0.0).too_large(600) is None


async def test_a_too_large_request_is_answered_429_in_openais_words_without_retry_after() -> None:
    # ceil(2400 / 4) + 3 prompt tokens and 16 completion tokens: 619 tokens, above 600 per minute.
    async with run_provider(ProviderConfig(tpm=600)) as provider:
        with pytest.raises(litellm.RateLimitError) as caught:
            await litellm.acompletion(
                model="openai/sim-model",
                api_base=provider.base_url,
                api_key="sk-test",
                messages=[{"role": "user", "content": "x" * 2400}],
                num_retries=0,
                max_retries=0,
            )
        stats = provider.stats
    assert (
        "Request too large for sim-model in organization org-simulated on tokens per min (TPM): "
        "Limit 600, Requested 619. The input or output tokens must be reduced"
    ) in str(caught.value)
    assert "retry-after" not in caught.value.litellm_response_headers
    assert (stats.requests, stats.rate_limited, stats.tokens_admitted) == (1, 1, 0)
