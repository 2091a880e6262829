"""Prices of models LiteLLM's cost map does not know, given by the user, and the check that every
model of a batch under a cost budget has a price.

Prices are LiteLLM's ``model_info`` fields, ``input_cost_per_token`` and ``output_cost_per_token``
(USD per token), given in ``[llm]`` (or an ``[llm.<name>]`` group) for its ``model``, or in a
``model_list`` deployment's ``model_info`` for the model it calls. They are registered with LiteLLM
(``litellm.register_model``), so estimates, budgets and results' ``cost`` all use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import litellm

from llmqueue.llm.request import job_model
from llmqueue.models import Job
from llmqueue.settings import Settings

__all__ = ["budget_refusal", "has_price", "register_prices", "spending_refusal", "unpriced"]


def register_prices(settings: Settings) -> None:
    """Register the prices the settings give with LiteLLM (once per process; idempotent)."""
    given: dict[str, dict[str, Any]] = {}
    for llm in [settings.llm, *(settings.llm_for(name) for name in settings.llm_groups)]:
        if llm.input_cost_per_token is not None or llm.output_cost_per_token is not None:
            given[llm.model] = _priced(
                llm.model, llm.input_cost_per_token or 0.0, llm.output_cost_per_token or 0.0
            )
    for deployment in settings.model_list:
        info = deployment.model_info
        if "input_cost_per_token" in info or "output_cost_per_token" in info:
            model = deployment.litellm_params.model
            price = _priced(
                model,
                float(info.get("input_cost_per_token") or 0.0),
                float(info.get("output_cost_per_token") or 0.0),
            )
            given[model] = {**price, **{k: info[k] for k in _CACHED if k in info}}
    if given:
        litellm.register_model(given)


_CACHED = ("cache_read_input_token_cost", "cache_creation_input_token_cost")
"""What LiteLLM charges prompt tokens a provider's prompt cache read or wrote."""


def _priced(model: str, input_cost: float, output_cost: float) -> dict[str, float]:
    """A price as LiteLLM's ``model_info`` gives it. Prompt tokens a provider's cache read or wrote are
    charged the input price when LiteLLM's cost map has no price of its own for them (what LiteLLM 1.110
    charges then too, but it warns at every registration that they "will default to 0"); a known
    model keeps its cache discount."""
    known = litellm.model_cost.get(model) or litellm.model_cost.get(model.partition("/")[2]) or {}
    missing = [name for name in _CACHED if known.get(name) is None]
    return {
        "input_cost_per_token": input_cost,
        "output_cost_per_token": output_cost,
        **dict.fromkeys(missing, input_cost),
    }


def has_price(model: str) -> bool:
    """Whether LiteLLM (with the registered prices) can price a call to ``model``."""
    try:
        litellm.cost_per_token(model=model, prompt_tokens=1, completion_tokens=1)
    except Exception:  # LiteLLM raises for a model it has no price for
        return False
    return True


def unpriced(models: Iterable[str]) -> list[str]:
    """The models of ``models`` without a price, sorted."""
    return sorted({m for m in models if not has_price(m)})


def price_refusal(
    jobs: Callable[[], Iterable[Job]], settings: Settings, *, max_cost: float | None
) -> str | None:
    """Why the budgets cannot hold for the jobs ``jobs()`` gives (called once per check): the cost budget
    ``max_cost`` (when given) and the spending limits need a price for each model they call."""
    for refused in (budget_refusal, spending_refusal) if max_cost is not None else (spending_refusal,):
        refusal = refused(jobs(), settings)
        if refusal is not None:
            return refusal
    return None


def budget_refusal(jobs: Iterable[Job], settings: Settings) -> str | None:
    """Why a cost budget cannot hold for ``jobs``: the models they call (deployments and fallbacks
    included) that have no price, named; None when every one has one."""
    missing = unpriced(_served(jobs, settings, lambda _model: True))
    if not missing:
        return None
    return (
        "--max-cost needs a price for every model (as does [batch] max_cost, env BATCH_MAX_COST), and "
        f"LiteLLM knows none for {_named(missing)}: give input_cost_per_token and output_cost_per_token "
        "(USD) in [llm] (or the deployment's model_info), or run without a cost budget"
    )


def spending_refusal(jobs: Iterable[Job], settings: Settings) -> str | None:
    """Why the spending limits (``[budget]``) cannot cap ``jobs``: the models they call under a limit
    (deployments and fallbacks included) that have no price, named; None when every one has one."""
    if not settings.budget.active:
        return None
    missing = unpriced(_served(jobs, settings, settings.budget.applies_to))
    if not missing:
        return None
    return (
        f"spending limits ([budget]) are set and LiteLLM knows no price for {_named(missing)}, so their "
        "calls cannot be capped: give input_cost_per_token and output_cost_per_token (USD) in [llm] (or "
        "the deployment's model_info), or remove the limits that apply to them"
    )


def _served(jobs: Iterable[Job], settings: Settings, wanted: Callable[[str], bool]) -> set[str]:
    """The LiteLLM models ``jobs`` call (their model, its fallbacks, the deployments of either) for the
    model names ``wanted`` says."""
    register_prices(settings)
    models: set[str] = set()
    for job in jobs:
        own = job_model(job, settings.llm_for(job.llm_config))
        for model in [own, *settings.fallbacks.get(own, [])]:
            if wanted(model):
                served = [d.litellm_params.model for d in settings.model_list if d.model_name == model]
                models.update(served or [model])
    return models


def _named(models: list[str]) -> str:
    return ", ".join(repr(m) for m in models)
