"""Deployments: several endpoints or keys serving one model name, in LiteLLM's ``model_list`` shape.

A job that asks for a ``model_name`` of the model list is routed, at admission, to whichever of that
name's deployments can take it soonest; each deployment has its own rate limit (``rpm``/``tpm`` in its
``litellm_params``) and its own bucket in Redis, named by :attr:`Deployment.name`.

Configuration (``config.toml``, or the ``model_list`` of a LiteLLM proxy YAML with ``--litellm-config``)::

    [[model_list]]
    model_name = "gpt-4o"
    litellm_params = { model = "azure/gpt-4o-eu", api_base = "https://eu.example.com",
                       api_key = "os.environ/AZURE_EU_KEY", rpm = 600, tpm = 100000 }

A string value ``os.environ/NAME`` is read from the worker's environment when the worker starts
(:func:`resolve`), as LiteLLM does; until then settings hold only the reference. Keys never reach
Redis, results or logs: a deployment is named by ``model_info.id`` or ``<model_name>#<index>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from llmqueue.errors import ConfigError

__all__ = [
    "Deployment",
    "LiteLLMParams",
    "ResolvedDeployment",
    "RouterSettings",
    "parse_fallbacks",
    "parse_model_list",
    "read_litellm_config",
    "resolve",
]

logger = logging.getLogger("llmqueue.config")

ENV_PREFIX = "os.environ/"
# Attempts are counted once, by the worker: LiteLLM's own retries would hide calls from the limiter.
IGNORED_PARAMS = frozenset({"num_retries", "max_retries"})
# Parameters whose values are credentials, whether written inline or read from the environment.
SECRET_PARAMS = frozenset(
    {
        "api_key",
        "azure_ad_token",
        "aws_secret_access_key",
        "aws_access_key_id",
        "aws_session_token",
        "vertex_credentials",
        "client_secret",
    }
)


class LiteLLMParams(BaseModel):
    """``litellm_params`` of one deployment: ``model`` and any other ``litellm.acompletion`` argument.

    ``rpm``/``tpm`` (per minute), and ``itpm``/``otpm`` where the provider limits input and output tokens
    apart, are this deployment's limit, enforced by llmqueue and not sent on.
    """

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    api_base: str | None = None
    api_version: str | None = None
    rpm: float | None = Field(None, gt=0, description="requests per minute of this deployment")
    tpm: float | None = Field(None, gt=0, description="tokens per minute of this deployment")
    itpm: float | None = Field(None, gt=0, description="input tokens per minute of this deployment")
    otpm: float | None = Field(None, gt=0, description="output tokens per minute of this deployment")

    @model_validator(mode="after")
    def _hide_credentials(self) -> LiteLLMParams:
        # Credentials written inline (aws_secret_access_key …) stay hidden in reprs and dumps.
        extra = self.model_extra or {}
        for key in SECRET_PARAMS.intersection(extra):
            if isinstance(extra[key], str):
                extra[key] = SecretStr(extra[key])
        return self


class Deployment(BaseModel):
    """One entry of ``model_list``: the name jobs ask for, and how to call this deployment of it."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    model_info: dict[str, Any] = Field(default_factory=dict)
    index: int = Field(0, ge=0, description="position in model_list (set by parse_model_list)")

    @property
    def name(self) -> str:
        """The deployment's name in results, logs and metrics, and its limiter scope; never the key."""
        given = self.model_info.get("id")
        return str(given) if given else f"{self.model_name}#{self.index}"

    @property
    def label(self) -> str:
        """How configuration errors name this entry: ``model_list[1] (gpt-4o)``."""
        return f"model_list[{self.index}] ({self.model_name})"

    @property
    def extra_params(self) -> dict[str, Any]:
        """The LiteLLM arguments besides model, api_key, api_base, api_version and the limits."""
        return dict(self.litellm_params.model_extra or {})


class RouterSettings(BaseModel):
    """``[router_settings]``: when a failing deployment is taken out, and for how long (LiteLLM's names).

    A connection error, 401 or 404 takes a deployment out at once; 5xx answers and timeouts do after
    ``allowed_fails`` of them within a minute. It stays out ``cooldown_time`` seconds, doubled each time
    it fails again right after coming back, up to ``max_cooldown_time``.
    """

    model_config = ConfigDict(extra="forbid")

    allowed_fails: int = Field(3, ge=1, description="5xx/timeouts within 60 s that take a deployment out")
    cooldown_time: float = Field(5.0, gt=0, description="seconds a failing deployment is taken out")
    max_cooldown_time: float = Field(60.0, gt=0, description="seconds, the longest it is taken out")


@dataclass(frozen=True)
class ResolvedDeployment:
    """A deployment with its ``os.environ/`` references read: what a worker calls."""

    deployment: Deployment
    params: dict[str, Any] = field(repr=False)
    """Arguments for ``litellm.acompletion`` (model, credentials, endpoint, extras), secrets included."""
    secrets: tuple[str, ...] = field(repr=False)

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def model(self) -> str:
        """The LiteLLM model string this deployment calls."""
        return self.deployment.litellm_params.model


def parse_model_list(raw: Any, where: str) -> list[Deployment]:
    """Validate a ``model_list``; ConfigError names the file, the entry and the key at fault."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: model_list must be a list of entries, not {type(raw).__name__}")
    problems: list[str] = []
    deployments: list[Deployment] = []
    for index, entry in enumerate(raw):
        name = entry.get("model_name") if isinstance(entry, dict) else None
        label = f"model_list[{index}]" + (f" ({name})" if isinstance(name, str) else "")
        if not isinstance(entry, dict):
            problems.append(f"{label}: an entry must be a table with model_name and litellm_params")
            continue
        try:
            deployment = Deployment.model_validate({**entry, "index": index})
        except ValidationError as exc:
            problems += [f"{label} {_location(error['loc'])}: {_message(error)}" for error in exc.errors()]
            continue
        problems += [f"{label} litellm_params.{key}: {p}" for key, p in _param_problems(deployment)]
        deployments.append(deployment)
    names: dict[str, int] = {}
    for deployment in deployments:
        if deployment.name in names:
            problems.append(
                f"{deployment.label} model_info.id: {deployment.name!r} is already the name of "
                f"model_list[{names[deployment.name]}]"
            )
        names.setdefault(deployment.name, deployment.index)
    if problems:
        raise ConfigError(f"invalid model_list in {where}:\n" + "\n".join(f"  {p}" for p in problems))
    for deployment in deployments:
        for key in sorted(IGNORED_PARAMS.intersection(deployment.extra_params)):
            logger.warning(
                "%s litellm_params.%s is ignored: llmqueue retries on its own ([llm] num_retries)",
                deployment.label,
                key,
            )
    return deployments


def parse_fallbacks(raw: Any, where: str) -> dict[str, list[str]]:
    """``fallbacks`` as a table (``{"gpt-4o" = ["gpt-4o-mini"]}``) or LiteLLM's list of one-key tables."""
    entries: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        entries = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(item, dict) for item in raw):
        entries = [pair for item in raw for pair in item.items()]
    else:
        raise ConfigError(f'{where}: fallbacks must be a table such as {{ "gpt-4o" = ["gpt-4o-mini"] }}')
    fallbacks: dict[str, list[str]] = {}
    for model, targets in entries:
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"{where}: fallbacks.{model}: must be a list of model names")
        if model in targets:
            raise ConfigError(f"{where}: fallbacks.{model}: a model cannot fall back to itself")
        fallbacks[str(model)] = list(targets)
    return fallbacks


def read_litellm_config(path: Path) -> dict[str, Any]:
    """The parts of a LiteLLM proxy config llmqueue uses: ``model_list``, and fallbacks and cooldowns.

    Returns settings data (``model_list``, and ``fallbacks``/``router_settings`` when the file sets
    them). Sections and router settings llmqueue has no use for are named in a warning.
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"LiteLLM config {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "model_list" not in raw:
        raise ConfigError(f"{path}: a LiteLLM config needs a model_list")
    where = str(path)
    data: dict[str, Any] = {"model_list": parse_model_list(raw["model_list"], where)}
    router = raw.get("router_settings") or {}
    litellm_settings = raw.get("litellm_settings") or {}
    if not isinstance(router, dict) or not isinstance(litellm_settings, dict):
        raise ConfigError(f"{where}: router_settings and litellm_settings must be mappings")
    fallbacks = router.get("fallbacks", litellm_settings.get("fallbacks"))
    if fallbacks:
        data["fallbacks"] = parse_fallbacks(fallbacks, where)
    known = {k: router[k] for k in RouterSettings.model_fields if k in router}
    if known:
        try:
            data["router_settings"] = RouterSettings.model_validate(known)
        except ValidationError as exc:
            raise ConfigError(
                f"{where}: "
                + "; ".join(f"router_settings.{_location(e['loc'])}: {_message(e)}" for e in exc.errors())
            ) from None
    unused = [
        f"router_settings.{k}" for k in router if k not in RouterSettings.model_fields and k != "fallbacks"
    ]
    unused += [f"litellm_settings.{k}" for k in litellm_settings if k != "fallbacks"]
    unused += [k for k in raw if k not in ("model_list", "router_settings", "litellm_settings")]
    if unused:
        logger.warning(
            "%s: llmqueue uses only model_list, fallbacks and cooldowns; ignored: %s",
            where,
            ", ".join(unused),
        )
    return data


def resolve(deployments: Sequence[Deployment], environ: Mapping[str, str]) -> list[ResolvedDeployment]:
    """Read each ``os.environ/NAME`` value from ``environ`` (a worker's environment, at start-up).

    ConfigError names every entry and key whose variable is not set.
    """
    resolved: list[ResolvedDeployment] = []
    problems: list[str] = []
    for deployment in deployments:
        spec = deployment.litellm_params
        values: dict[str, Any] = {"model": spec.model, **deployment.extra_params}
        for key in ("api_key", "api_base", "api_version"):
            value = getattr(spec, key)
            if value is not None:
                values[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        params: dict[str, Any] = {}
        secrets: list[str] = []
        for key, value in values.items():
            if key in IGNORED_PARAMS:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, str) and value.startswith(ENV_PREFIX):
                variable = value.removeprefix(ENV_PREFIX)
                if variable not in environ:
                    problems.append(
                        f"{deployment.label} litellm_params.{key}: environment variable {variable} is not set"
                    )
                    continue
                value = environ[variable]
                if key not in ("model", "api_base", "api_version"):
                    secrets.append(value)
            elif key in SECRET_PARAMS and isinstance(value, str):
                secrets.append(value)
            params[key] = value
        resolved.append(ResolvedDeployment(deployment, params, tuple(s for s in secrets if s)))
    if problems:
        raise ConfigError("cannot start the deployments:\n" + "\n".join(f"  {p}" for p in problems))
    return resolved


def _param_problems(deployment: Deployment) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for key, value in deployment.extra_params.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and value.startswith(ENV_PREFIX) and not value.removeprefix(ENV_PREFIX):
            problems.append((key, f"{ENV_PREFIX} needs a variable name"))
    spec = deployment.litellm_params
    for key in ("api_key", "api_base", "api_version"):
        value = getattr(spec, key)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and text == ENV_PREFIX:
            problems.append((key, f"{ENV_PREFIX} needs a variable name"))
    return problems


def _location(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "(entry)"


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (LiteLLM's keys are model_name, litellm_params, model_info)"
    if error["type"] == "missing":
        return "required"
    return str(error["msg"]).removeprefix("Value error, ")
