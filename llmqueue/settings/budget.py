"""``[budget]``: spending limits every worker shares (:mod:`llmqueue.queue.spending` holds them)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SpendLimit(BaseModel):
    """USD a day and a month (UTC), for one model or for every model together."""

    model_config = ConfigDict(extra="forbid")

    daily: float | None = Field(None, gt=0, description="USD per UTC day")
    monthly: float | None = Field(None, gt=0, description="USD per UTC calendar month")


class BudgetConfig(SpendLimit):
    """Spending limits every worker shares (``[budget]``, env ``LLM_BUDGET_<FIELD>``): ``daily`` and
    ``monthly`` for all models together, ``[budget.models."<model>"]`` for one model (a LiteLLM model
    string or a model_list ``model_name``). A job that would pass one is held, not failed, until the
    period rolls over or the limit is raised (:mod:`llmqueue.queue.spending`)."""

    models: dict[str, SpendLimit] = Field(default_factory=dict, description="limits of one model each")
    warn_at: float = Field(0.8, gt=0, le=1, description="fraction of a limit at which a warning is given")

    @property
    def active(self) -> bool:
        """Whether any limit is set (without one, spend is not tracked)."""
        limits = [self, *self.models.values()]
        return any(limit.daily is not None or limit.monthly is not None for limit in limits)

    def applies_to(self, model: str) -> bool:
        """Whether a limit is in force for calls to ``model`` (overall, or its own)."""
        own = self.models.get(model, SpendLimit())
        return any(limit is not None for limit in (self.daily, self.monthly, own.daily, own.monthly))


def budget_from_env(llm_values: dict[str, Any]) -> dict[str, Any]:
    """``LLM_BUDGET_<FIELD>`` variables (read as ``llm.budget_<field>``) as ``[budget]`` keys;
    ``LLM_BUDGET_MODELS`` is JSON (``{"gpt-4o": {"daily": 5}}``)."""
    found = {k.removeprefix("budget_"): v for k, v in llm_values.items() if k.startswith("budget_")}
    if isinstance(found.get("models"), str):
        with contextlib.suppress(json.JSONDecodeError):  # left as given, the check names the variable
            found["models"] = json.loads(found["models"])
    return {k: v for k, v in found.items() if k in BudgetConfig.model_fields}
