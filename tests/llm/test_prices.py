"""Prices the user gives for a model LiteLLM does not know (``llmqueue.llm.prices``)."""

from __future__ import annotations

import logging

import litellm
import pytest

from llmqueue.llm.prices import register_prices
from llmqueue.model_list import Deployment
from llmqueue.settings import LLMConfig, Settings


def test_prompt_tokens_a_providers_cache_read_cost_the_input_price_unless_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    given = Deployment.model_validate(
        {
            "model_name": "cheap-cache",
            "litellm_params": {"model": "openai/ft-with-cache-prices-b2"},
            "model_info": {
                "input_cost_per_token": 0.00001,
                "output_cost_per_token": 0.00002,
                "cache_read_input_token_cost": 0.000001,
            },
        }
    )
    llm = LLMConfig(model="openai/ft-priced-a1", input_cost_per_token=0.00001, output_cost_per_token=0.00002)
    register_prices(Settings(llm=llm, model_list=[given]))

    # 1,000 prompt tokens, all read from the provider's cache: charged at the input price.
    prompt, completion = litellm.cost_per_token(
        model="openai/ft-priced-a1", prompt_tokens=1000, completion_tokens=10, cache_read_input_tokens=1000
    )
    assert prompt == pytest.approx(1000 * 0.00001) and completion == pytest.approx(10 * 0.00002)
    # A deployment that gives its cache price keeps it.
    prompt, _ = litellm.cost_per_token(
        model="openai/ft-with-cache-prices-b2", prompt_tokens=1000, cache_read_input_tokens=1000
    )
    assert prompt == pytest.approx(1000 * 0.000001)
    assert not [r for r in caplog.records if "register_model" in r.getMessage()]  # no warning about it


def test_a_price_given_for_a_model_litellm_knows_keeps_its_cache_discount() -> None:
    known = litellm.model_cost["gpt-4o-mini"]
    llm = LLMConfig(
        model="openai/gpt-4o-mini",
        input_cost_per_token=known["input_cost_per_token"],
        output_cost_per_token=known["output_cost_per_token"],
    )
    register_prices(Settings(llm=llm))

    prompt, _ = litellm.cost_per_token(
        model="openai/gpt-4o-mini", prompt_tokens=1000, cache_read_input_tokens=1000
    )
    assert prompt == pytest.approx(1000 * known["cache_read_input_token_cost"])
