"""Where the settings come from besides arguments: the environment (only the names llmqueue knows)
and the config file's data, set for one build by :func:`llmqueue.settings.load.load_settings`."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from pydantic_settings import EnvSettingsSource, PydanticBaseSettingsSource

from llmqueue.settings.budget import budget_from_env
from llmqueue.settings.llm import LLMConfig
from llmqueue.settings.worker import BatchConfig, CacheConfig, WorkerConfig

FILE_DATA: ContextVar[Mapping[str, Any]] = ContextVar(
    "llmqueue_settings_file_data", default=MappingProxyType({})
)
"""The TOML data for the settings being built; set by load_settings for the duration of one build."""


class FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return FILE_DATA.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(FILE_DATA.get())


ENV_PREFIXES = {
    "llm": "LLM_",
    "worker": "WORKER_",
    "batch": "BATCH_",
    "cache": "CACHE_",
    "budget": "LLM_BUDGET_",
}
"""The sections the environment can set, and the prefix of their variables."""

REDIS_FIELDS = (
    "redis_url",
    "redis_sentinels",
    "redis_sentinel_service",
    "redis_wait_replicas",
    "redis_wait_timeout",
)

OURS = (*REDIS_FIELDS, *ENV_PREFIXES)
"""The settings the environment can set: the Redis ones and the sections with a prefix."""


class KnownEnvSource(EnvSettingsSource):
    """Environment variables, ignoring ``LLM_*``/``WORKER_*``/``BATCH_*``/``CACHE_*`` names llmqueue does
    not know.

    Other tools (OpenHands among them) set more ``LLM_*`` variables, and ``BATCH_SIZE`` is common in
    training scripts; they are not ours to reject.
    """

    def prepare_field_value(self, field_name: str, field: Any, value: Any, value_is_complex: bool) -> Any:
        if field_name not in OURS:
            return None  # config.toml only: LIMITS=..., LLM_GROUPS=... are not read (nor parsed)
        return super().prepare_field_value(field_name, field, value, value_is_complex)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        value, key, is_complex = super().get_field_value(field, field_name)
        if field_name in ENV_PREFIXES:
            # A bare CACHE=yes or BATCH=1 is another program's (it failed to parse, or hid CACHE_TTL):
            # a section is set by its prefixed variables only.
            value = None
        return value, key, is_complex

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        data.pop("budget", None)  # BUDGET_* is not ours: the budget's variables are LLM_BUDGET_*
        if isinstance(data.get("llm"), dict) and (budget := budget_from_env(data["llm"])):
            data["budget"] = budget
        sections = (
            ("llm", LLMConfig),
            ("worker", WorkerConfig),
            ("batch", BatchConfig),
            ("cache", CacheConfig),
        )
        for section, model in sections:
            values = data.get(section)
            if isinstance(values, dict):
                data[section] = {k: v for k, v in values.items() if k in model.model_fields}
        for section in ("batch", "cache"):
            if not isinstance(data.get(section), dict) or not data[section]:
                data.pop(section, None)  # no BATCH_* variable of ours
        return {k: v for k, v in data.items() if k in OURS}
