"""Settings: one model the whole program reads, built once at start-up.

Sources, lowest to highest precedence: defaults → ``config.toml`` → environment → explicit arguments.
The ``[llm]`` section and the ``LLM_*`` variables keep OpenHands' names and defaults; ``[llm.<name>]``
tables are named groups that override ``[llm]`` for the jobs that name them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from llmqueue.connection import is_sentinel_url, sentinel_url
from llmqueue.errors import ConfigError
from llmqueue.model_list import (
    Deployment,
    RouterSettings,
    parse_fallbacks,
    parse_model_list,
    read_litellm_config,
)

DEFAULT_CONFIG_FILE = Path("config.toml")
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"})


class LLMConfig(BaseModel):
    """How to call the provider, and the 429/transient retry policy (env ``LLM_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = "gpt-4o"
    api_key: SecretStr | None = None
    base_url: str | None = None
    api_version: str | None = None
    embedding_model: str = "text-embedding-3-small"
    embedding_deployment_name: str | None = None
    drop_params: bool = True
    disable_vision: bool = False
    caching_prompt: bool = True
    input_cost_per_token: float | None = Field(
        None, ge=0, description="USD per prompt token of `model`, for a model LiteLLM has no price for"
    )
    output_cost_per_token: float | None = Field(
        None, ge=0, description="USD per completion token of `model` (with input_cost_per_token)"
    )
    num_retries: int = Field(4, ge=0, description="retries after the first attempt (429 and transient)")
    retry_min_wait: float = Field(5.0, ge=0, description="seconds")
    retry_max_wait: float = Field(30.0, ge=0, description="seconds")
    retry_multiplier: float = Field(2.0, gt=0)
    retry_jitter: float = Field(0.0, ge=0, le=1, description="fraction of the delay added at random")
    timeout: float = Field(120.0, gt=0, description="seconds one provider call may take")
    schema_retries: int = Field(
        2,
        ge=0,
        description="times an answer that does not meet the job's response_format (JSON, its json_schema) "
        "is asked again, with the error, before the job fails as invalid_output",
    )
    default_completion_tokens: int = Field(
        1024, ge=0, description="completion tokens assumed for the limiter when a job sets no max_tokens"
    )
    rpm: float | None = Field(
        None,
        gt=0,
        description="requests/min for every scope jobs of this config run under (each its own bucket)",
    )
    tpm: float | None = Field(
        None,
        gt=0,
        description="tokens/min for every scope jobs of this config run under (each its own bucket)",
    )
    itpm: float | None = Field(
        None, gt=0, description="input tokens/min, as rpm (for providers that limit input and output apart)"
    )
    otpm: float | None = Field(
        None, gt=0, description="output tokens/min, as rpm (for providers that limit input and output apart)"
    )
    limit_scope: str | None = Field(None, description="limiter scope; defaults to the model string")
    allowed_models: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of models a job may name beyond this config's provider "
        "(its credentials go with the call)",
    )
    allowed_params: list[str] = Field(
        default_factory=list, description="job params passed to LiteLLM beyond OpenAI's and provider extras"
    )

    @model_validator(mode="after")
    def _waits_ordered(self) -> LLMConfig:
        if self.retry_min_wait > self.retry_max_wait:
            raise ValueError(
                f"retry_min_wait ({self.retry_min_wait:g}) must not exceed retry_max_wait "
                f"({self.retry_max_wait:g})"
            )
        return self

    @property
    def scope(self) -> str:
        """The limiter scope jobs using this config share."""
        return self.limit_scope or self.model


class LimitConfig(BaseModel):
    """A shared rate limit for one scope (a model string or a deployment name)."""

    model_config = ConfigDict(extra="forbid")

    rpm: float | None = Field(None, gt=0, description="requests per minute")
    tpm: float | None = Field(None, gt=0, description="tokens per minute")
    itpm: float | None = Field(None, gt=0, description="input tokens per minute (Anthropic's ITPM)")
    otpm: float | None = Field(None, gt=0, description="output tokens per minute (Anthropic's OTPM)")
    burst_seconds: float = Field(
        1.0, gt=0, description="bucket capacity, in seconds of the rate: how much may go out at once"
    )
    reserve: float = Field(
        0.1, ge=0, lt=1, description="fraction of the bucket jobs below the default priority may not take"
    )
    spread_seconds: float = Field(
        0.1,
        ge=0,
        description="seconds of the rate every admission leaves in the bucket (at most a quarter of it): "
        "calls reach the provider unevenly, and a bucket run down to empty at both ends sees that as 429s",
    )


class WorkerConfig(BaseModel):
    """Queue and worker behaviour (env ``WORKER_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    queue_name: str = "llmqueue:queue"
    max_jobs: int = Field(200, ge=1, description="concurrent jobs per worker process")
    reserved_slots: int | None = Field(
        None,
        ge=0,
        description="slots per worker that batch-priority jobs may not take (default: a tenth of max_jobs, "
        "at least 1)",
    )
    poll_delay: float = Field(0.05, gt=0, description="seconds between queue polls")
    max_inline_wait: float = Field(
        2.0, ge=0, description="seconds a job may wait for the limiter in place before it is re-deferred"
    )
    job_ttl: float = Field(7 * 86400.0, gt=0, description="seconds a queued job is kept before it expires")
    result_ttl: float = Field(7 * 86400.0, gt=0, description="seconds results are kept")
    health_check_interval: float = Field(10.0, gt=0, description="seconds")
    in_progress_ttl: float = Field(
        20.0, gt=0, description="seconds a running job stays claimed without a heartbeat (crash recovery)"
    )
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between heartbeats")
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds running calls may finish after SIGTERM before they are put back"
    )
    redis_connect_retries: int = Field(
        10, ge=0, description="start-up attempts to reach Redis, each retrying its PING for ~17 s"
    )
    warm_up: bool = Field(
        True, description="make one local LiteLLM call at start-up so the first real one is fast"
    )

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> WorkerConfig:
        if self.heartbeat_interval * 2 > self.in_progress_ttl:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval:g}) must be at most half of in_progress_ttl "
                f"({self.in_progress_ttl:g}), or running jobs lose their claim between beats"
            )
        return self

    @model_validator(mode="after")
    def _reserve_leaves_slots(self) -> WorkerConfig:
        if self.reserved_slots is not None and self.reserved_slots >= self.max_jobs:
            raise ValueError(
                f"reserved_slots ({self.reserved_slots}) must be below max_jobs ({self.max_jobs}), "
                "or batch jobs could never run"
            )
        return self

    def slots_reserved(self) -> int:
        """Slots kept for jobs above ``batch`` priority: ``reserved_slots``, or a tenth of max_jobs."""
        if self.reserved_slots is not None:
            return self.reserved_slots
        return max(1, self.max_jobs // 10) if self.max_jobs > 1 else 0

    def job_timeout(self, llm_timeout: float) -> float:
        """arq's hard timeout: longer than the LLM call's own timeout plus the longest inline wait, plus
        the time a worker keeps retrying to store a result it paid for (``RESULT_STORE_PATIENCE``)."""
        return llm_timeout + self.max_inline_wait + 30.0 + RESULT_STORE_PATIENCE


RESULT_STORE_PATIENCE = 60.0
"""Seconds a worker keeps trying to store the result of a paid call while Redis refuses writes."""


class BatchConfig(BaseModel):
    """Defaults for batches (``[batch]``): spending caps, overridden by ``--max-cost``/``--max-tokens``."""

    model_config = ConfigDict(extra="forbid")

    max_cost: float | None = Field(None, gt=0, description="USD; no job of a batch starts once it spent this")
    max_tokens: int | None = Field(None, gt=0, description="tokens; no job starts once a batch used this")
    window: int | None = Field(
        None,
        ge=1,
        description="jobs of a batch `llmqueue run` keeps unfinished in Redis as it feeds the file "
        "(default: from the rate and the workers' slots, 200 to 20,000)",
    )


class CacheConfig(BaseModel):
    """The response cache (``[cache]``, env ``CACHE_<FIELD>``; ``cache = false`` turns it off).

    Batch lines are cached unless ``enabled`` is false (or ``--no-cache``); single jobs only when they
    set ``cache=True``. ``backend = "disk"`` keeps responses in a SQLite file under ``dir`` (default: the
    user's cache directory), which outlives the embedded Redis of ``llmqueue run``; ``"redis"`` keeps
    them in the queue's own Redis, for a long-running one.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    backend: Literal["disk", "redis"] = "disk"
    dir: Path | None = Field(None, description="disk backend: default $XDG_CACHE_HOME/llmqueue")
    ttl: float | None = Field(None, gt=0, description="seconds a response is reused; None: until evicted")
    max_size_mb: float = Field(1024.0, gt=0, description="MB of responses kept; the oldest go first")

    def resolved_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """``dir``, or ``$XDG_CACHE_HOME/llmqueue`` (``~/.cache/llmqueue`` when that is unset)."""
        if self.dir is not None:
            return self.dir.expanduser()
        env = os.environ if environ is None else environ
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "llmqueue"


def _cache_section(value: Any) -> Any:
    """``cache = false`` (or true) at the top level is ``[cache] enabled = ...``."""
    return {"enabled": value} if isinstance(value, bool) else value


class Settings(BaseSettings):
    """Everything llmqueue reads. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="_", env_nested_max_split=1, extra="forbid", case_sensitive=False
    )

    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_sentinels: list[str] | str = Field(
        default_factory=list,
        description="Sentinels (host:port, a list or comma-separated) that name the master: with "
        "redis_sentinel_service, they replace redis_url's host (its user, password, db and TLS are kept)",
    )
    redis_sentinel_service: str | None = Field(
        None, description="the name the sentinels monitor the master under (sentinel monitor <name>)"
    )
    llm: LLMConfig = LLMConfig()
    llm_groups: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="[llm.<name>] tables: the keys each group sets over [llm]"
    )
    limits: dict[str, LimitConfig] = Field(default_factory=dict)
    worker: WorkerConfig = WorkerConfig()
    batch: BatchConfig = BatchConfig()
    cache: CacheConfig = CacheConfig()
    model_list: list[Deployment] = Field(
        default_factory=list, description="deployments by model_name, in LiteLLM's shape (model_list.py)"
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="model names tried in turn when a job's retries are spent"
    )
    router_settings: RouterSettings = RouterSettings()

    @field_validator("llm_groups")
    @classmethod
    def _group_keys_known(cls, groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {name: check_group_keys(name, group) for name, group in groups.items()}

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_flag(cls, value: Any) -> Any:
        return _cache_section(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr) -> SecretStr:
        scheme = url.get_secret_value().partition("://")[0].lower()
        if scheme not in REDIS_SCHEMES:
            given = f"{scheme}://" if scheme else "a URL without a scheme"
            raise ValueError(
                f"a Redis URL starts with redis://, rediss://, unix:// or redis+sentinel://, not {given}"
            )
        return url

    @model_validator(mode="after")
    def _through_sentinels(self) -> Settings:
        sentinels = self.redis_sentinels
        if isinstance(sentinels, str):
            sentinels = [s.strip() for s in sentinels.split(",") if s.strip()]
        self.redis_sentinels = sentinels
        if not sentinels and not self.redis_sentinel_service:
            return self
        if not sentinels or not self.redis_sentinel_service:
            raise ValueError("redis_sentinels and redis_sentinel_service are set together, or neither")
        url = self.redis_url.get_secret_value()
        if is_sentinel_url(url) or url.startswith("unix:"):
            raise ValueError(
                "redis_sentinels/redis_sentinel_service take the user, password, db and TLS of a "
                "redis:// or rediss:// redis_url; give either them or a redis+sentinel:// URL"
            )
        self.redis_url = SecretStr(sentinel_url(url, sentinels, self.redis_sentinel_service))
        return self

    def deployments_of(self, model_name: str) -> list[Deployment]:
        """The deployments serving ``model_name`` (empty when it is a plain LiteLLM model string)."""
        return [d for d in self.model_list if d.model_name == model_name]

    @model_validator(mode="after")
    def _groups_valid_over_llm(self) -> Settings:
        for name in self.llm_groups:
            try:
                self.llm_for(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _KnownEnvSource(settings_cls), _FileSource(settings_cls))

    def llm_for(self, group: str | None) -> LLMConfig:
        """The ``[llm]`` settings with the named group's keys laid over them."""
        if group is None:
            return self.llm
        try:
            overrides = self.llm_groups[group]
        except KeyError:
            known = ", ".join(sorted(self.llm_groups)) or "none"
            raise ConfigError(f"unknown llm_config group {group!r} (configured groups: {known})") from None
        # A group inherits [llm]'s rpm/tpm/itpm/otpm (LLM_RPM, ...) unless it sets its own; its scope is
        # its own.
        inherited = self.llm.model_dump(exclude=set(NOT_INHERITED))
        try:
            return LLMConfig.model_validate({**inherited, **overrides})
        except ValidationError as exc:
            raise ConfigError(f"[llm.{group}] over [llm]: {_inline(exc)}") from None

    def limit_for(self, scope: str, llm: LLMConfig) -> LimitConfig | None:
        """The configured rate limit of ``scope``, or None when none is configured.

        ``[limits."<scope>"]`` wins; otherwise ``rpm``/``tpm``/``itpm``/``otpm`` of the LLM config the job
        runs under (``LLM_RPM``, ``LLM_TPM``, ``--rpm``, ...) limit whatever scope the job ends up in,
        whatever model it names: each scope gets its own bucket of that size.
        """
        configured = self.limits.get(scope)
        if configured is not None:
            return configured
        rates = {"rpm": llm.rpm, "tpm": llm.tpm, "itpm": llm.itpm, "otpm": llm.otpm}
        if any(rate is not None for rate in rates.values()):
            return LimitConfig(**rates)
        return None


# A group's limit scope is its own, and so is what its credentials may be sent to.
NOT_INHERITED = frozenset({"limit_scope", "allowed_models"})


def check_group_keys(name: str, group: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(group) - set(LLMConfig.model_fields))
    if unknown:
        raise ValueError("; ".join(f"[llm.{name}] {key}: unknown key" for key in unknown))
    if isinstance(group.get("api_key"), str):
        group = {**group, "api_key": SecretStr(group["api_key"])}
    return group


def _inline(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


# The TOML data for the settings being built; set by load_settings for the duration of one build.
_file_data: dict[str, Any] = {}


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _file_data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data)


class _KnownEnvSource(EnvSettingsSource):
    """Environment variables, ignoring ``LLM_*``/``WORKER_*`` names llmqueue does not know.

    Other tools (OpenHands among them) set more ``LLM_*`` variables; they are not ours to reject.
    """

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        for section, model in (("llm", LLMConfig), ("worker", WorkerConfig), ("cache", CacheConfig)):
            values = data.get(section)
            if isinstance(values, dict):
                data[section] = {k: v for k, v in values.items() if k in model.model_fields}
        if not isinstance(data.get("cache"), dict) or not data["cache"]:
            data.pop("cache", None)  # CACHE=... or no CACHE_* variable of ours: not our setting
        ours = ("redis_url", "redis_sentinels", "redis_sentinel_service", "llm", "worker", "cache")
        return {k: v for k, v in data.items() if k in ours}


class _FileSchema(BaseModel):
    """The shape of config.toml, checked before it is merged so errors can name the file."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = None
    redis_sentinels: list[str] | str | None = None
    redis_sentinel_service: str | None = None
    llm: LLMConfig | None = None
    llm_groups: dict[str, dict[str, Any]] = Field(default_factory=dict)
    limits: dict[str, LimitConfig] = Field(default_factory=dict)
    worker: WorkerConfig | None = None
    batch: BatchConfig | None = None
    cache: CacheConfig | None = None
    model_list: list[Deployment] | None = None
    fallbacks: dict[str, list[str]] | None = None
    router_settings: RouterSettings | None = None

    @field_validator("llm_groups")
    @classmethod
    def _group_keys_known(cls, groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {name: check_group_keys(name, group) for name, group in groups.items()}

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_flag(cls, value: Any) -> Any:
        return _cache_section(value)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse and check config.toml; named ``[llm.<name>]`` tables become ``llm_groups``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    data = dict(raw)
    llm_table = data.get("llm")
    if isinstance(llm_table, dict):
        _top_level_keys_under_llm(llm_table, path)
        data["llm"] = {k: v for k, v in llm_table.items() if not isinstance(v, dict)}
        data["llm_groups"] = {k: v for k, v in llm_table.items() if isinstance(v, dict)}
    # Checked apart, so an error names the entry (index and model_name), not only a position.
    if "model_list" in data:
        data["model_list"] = parse_model_list(data["model_list"], str(path))
    if "fallbacks" in data:
        data["fallbacks"] = parse_fallbacks(data["fallbacks"], str(path))
    try:
        _FileSchema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where=str(path), file_layout=True)) from None
    return {k: v for k, v in data.items() if v is not None}


def _top_level_keys_under_llm(llm_table: dict[str, Any], path: Path) -> None:
    """A top-level key written after ``[llm]`` lands in it (TOML): say so, not "unknown key"."""
    misplaced = sorted(
        key for key in llm_table if key in _FileSchema.model_fields and key not in LLMConfig.model_fields
    )
    if misplaced:
        names = ", ".join(misplaced)
        raise ConfigError(
            f"invalid settings in {path}:\n  [llm] {names}: a top-level key, but written after [llm] it "
            f"belongs to [llm] (in TOML a key belongs to the table above it); move {names} above the "
            "first [table] of the file"
        )


def load_settings(
    config_path: Path | None = None, *, litellm_config: Path | None = None, **overrides: Any
) -> Settings:
    """Build the settings from defaults, a config file, the environment and ``overrides``.

    ``config_path`` None means ``./config.toml`` when it exists. ``litellm_config`` is a LiteLLM proxy
    config whose ``model_list`` (and fallbacks, cooldowns) are used; config.toml must then set none of
    them. Raises ConfigError with a message naming each bad key and where it came from, never a
    pydantic traceback.
    """
    path = config_path
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    global _file_data
    data = read_config_file(path) if path is not None else {}
    if litellm_config is not None:
        from_yaml = read_litellm_config(litellm_config)
        both = sorted(set(from_yaml) & set(data))
        if both:
            raise ConfigError(
                f"{', '.join(both)} set in both {path} and {litellm_config}: keep them in one file"
            )
        data.update(from_yaml)
    _file_data = data
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        sources = ["arguments", "environment"] + ([str(path)] if path else [])
        where = "the " + ", ".join(sources[:-1]) + " or " + sources[-1]
        raise ConfigError(_describe(exc, where=where, file_layout=False)) from None
    finally:
        _file_data = {}


def _describe(exc: ValidationError, *, where: str, file_layout: bool) -> str:
    lines = [f"invalid settings in {where}:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if loc in (["llm_groups"], []):
            # Group and cross-field checks name their keys in the message itself.
            lines.append(f"  {_plain_message(error)}")
        else:
            lines.append(f"  {_key_name(loc, file_layout)}: {_plain_message(error)}")
    return "\n".join(lines)


_SECTIONS = frozenset({"llm", "worker", "batch", "cache", "router_settings"})


def _key_name(loc: list[str], file_layout: bool) -> str:
    if not loc:
        return "(settings)"
    if loc[0] == "llm_groups" and len(loc) >= 2:
        return f"[llm.{loc[1]}] " + ".".join(loc[2:]) if file_layout else "llm." + ".".join(loc[1:])
    if file_layout and len(loc) >= 2 and loc[0] == "limits":
        return f'[limits."{loc[1]}"] ' + ".".join(loc[2:])
    if file_layout and len(loc) >= 2:
        return f"[{loc[0]}] " + ".".join(loc[1:])
    if file_layout and loc[0] in _SECTIONS:  # the section's own check (retry_min_wait above retry_max_wait)
        return f"[{loc[0]}]"
    env = {"llm": "LLM_", "worker": "WORKER_", "cache": "CACHE_"}.get(loc[0])
    if env and len(loc) >= 2:
        return f"{'.'.join(loc)} (env {env}{loc[1].upper()})"
    if env:
        return f"{loc[0]} (env {env}*)"
    return ".".join(loc)


def _plain_message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
