"""The settings model the whole program reads (:class:`Settings`), and how groups and limits are
looked up in it. Built by :func:`llmqueue.settings.load.load_settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llmqueue.connection import is_sentinel_url, sentinel_url
from llmqueue.errors import ConfigError
from llmqueue.model_list import Deployment, RouterSettings
from llmqueue.settings.budget import BudgetConfig
from llmqueue.settings.llm import NOT_INHERITED, LimitConfig, LLMConfig, LLMGroups
from llmqueue.settings.sources import FileSource, KnownEnvSource
from llmqueue.settings.worker import BatchConfig, CacheConfig, CacheSection, WorkerConfig

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"})


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
    redis_wait_replicas: int | None = Field(
        None,
        ge=0,
        description="replicas a submission, a result or a batch's counters must reach (Redis WAIT) before "
        "they are acknowledged; None: 1 with a Sentinel URL (a replica is configured), else 0 (no wait)",
    )
    redis_wait_timeout: float = Field(
        1.0,
        gt=0,
        description="seconds a write waits for its replicas at most; then it is acknowledged with a warning",
    )
    llm: LLMConfig = LLMConfig()
    llm_groups: LLMGroups = Field(
        default_factory=dict, description="[llm.<name>] tables: the keys each group sets over [llm]"
    )
    limits: dict[str, LimitConfig] = Field(default_factory=dict)
    worker: WorkerConfig = WorkerConfig()
    batch: BatchConfig = BatchConfig()
    cache: CacheSection = CacheConfig()
    budget: BudgetConfig = BudgetConfig()
    model_list: list[Deployment] = Field(
        default_factory=list, description="deployments by model_name, in LiteLLM's shape (model_list.py)"
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="model names tried in turn when a job's retries are spent"
    )
    router_settings: RouterSettings = RouterSettings()

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

    def wait_replicas(self, url: str | None = None) -> int:
        """How many replicas a write that matters waits for on ``url`` (default ``redis_url``):
        ``redis_wait_replicas``, or 1 through sentinels and 0 (no wait) elsewhere when it is unset."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if is_sentinel_url(url or self.redis_url.get_secret_value()) else 0

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
        return (init_settings, KnownEnvSource(settings_cls), FileSource(settings_cls))

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


def _inline(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
