"""Routing: which deployments may serve a job, and the limits of each.

:class:`Deployments` is built once per worker from the settings' ``model_list`` and the worker's
environment. A job whose model is a ``model_name`` of the list gets that name's candidates; the
limiter admits it on whichever candidate's bucket can take it soonest (``RateLimiter.acquire_any``),
so the deployments together run at the sum of their limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmqueue.model_list import ResolvedDeployment, resolve
from llmqueue.settings import LimitConfig, Settings


@dataclass(frozen=True)
class Candidate:
    """One deployment a job may go to: its name (also its limiter scope) and its limit."""

    deployment: ResolvedDeployment
    limit: LimitConfig | None

    @property
    def scope(self) -> str:
        return self.deployment.name

    @property
    def model(self) -> str:
        return self.deployment.model


class Deployments:
    """The worker's deployments by model name, with their ``os.environ/`` values read."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self._by_name: dict[str, list[Candidate]] = {}
        for resolved in resolve(settings.model_list, environ):
            spec = resolved.deployment.litellm_params
            # [limits."<name>"] first, then litellm_params' rpm/tpm/itpm/otpm, then [llm]'s (LLM_RPM) for
            # each.
            limit = settings.limits.get(resolved.name)
            rates = {"rpm": spec.rpm, "tpm": spec.tpm, "itpm": spec.itpm, "otpm": spec.otpm}
            if limit is None and any(rate is not None for rate in rates.values()):
                limit = LimitConfig(**rates)
            if limit is None:
                limit = settings.limit_for(resolved.name, settings.llm)
            candidate = Candidate(resolved, limit)
            self._by_name.setdefault(resolved.deployment.model_name, []).append(candidate)

    def candidates(self, model: str) -> list[Candidate]:
        """The deployments serving ``model``; empty when it is a plain LiteLLM model string."""
        return self._by_name.get(model, [])

    @property
    def secrets(self) -> list[str]:
        """Every credential of every deployment, to scrub from error messages."""
        return [s for group in self._by_name.values() for c in group for s in c.deployment.secrets]


def fallback_model(fallbacks: Mapping[str, list[str]], model: str, moved_on: int) -> str:
    """The model a job for ``model`` runs on after moving on ``moved_on`` times along its fallbacks."""
    chain = fallbacks.get(model, [])
    return chain[min(moved_on, len(chain)) - 1] if moved_on and chain else model


def next_fallback(chain: list[str], moved_on: int) -> str | None:
    """The fallback a job whose retries are spent moves on to next, if its chain has one left."""
    return chain[moved_on] if moved_on < len(chain) else None


def deployment_kwargs(
    kwargs: dict[str, Any], deployment: ResolvedDeployment, job_params: Mapping[str, Any]
) -> dict[str, Any]:
    """A job's LiteLLM arguments sent to ``deployment``.

    The deployment's model, credentials and endpoint replace the worker's ``[llm]`` ones; its other
    ``litellm_params`` (``timeout``, ``temperature`` …) override ``[llm]`` too, but not what the job's
    own ``params`` set.
    """
    call = {k: v for k, v in kwargs.items() if k not in ("api_key", "api_base", "api_version")}
    for key, value in deployment.params.items():
        if key not in job_params or key == "model":
            call[key] = value
    return call
