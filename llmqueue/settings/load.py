"""Loading the settings: ``config.toml`` checked (errors name the file and key), a LiteLLM proxy
config's ``model_list`` merged, and the sources layered (defaults → config.toml → environment →
explicit arguments)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmqueue.errors import ConfigError
from llmqueue.model_list import (
    Deployment,
    RouterSettings,
    parse_fallbacks,
    parse_model_list,
    read_litellm_config,
)
from llmqueue.settings.budget import BudgetConfig
from llmqueue.settings.llm import LimitConfig, LLMConfig, LLMGroups
from llmqueue.settings.schema import Settings
from llmqueue.settings.sources import ENV_PREFIXES, FILE_DATA
from llmqueue.settings.worker import BatchConfig, CacheSection, WorkerConfig

DEFAULT_CONFIG_FILE = Path("config.toml")


class _FileSchema(BaseModel):
    """The shape of config.toml, checked before it is merged so errors can name the file."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = None
    redis_sentinels: list[str] | str | None = None
    redis_sentinel_service: str | None = None
    redis_wait_replicas: int | None = None
    redis_wait_timeout: float | None = None
    llm: LLMConfig | None = None
    llm_groups: LLMGroups = Field(default_factory=dict)
    limits: dict[str, LimitConfig] = Field(default_factory=dict)
    worker: WorkerConfig | None = None
    batch: BatchConfig | None = None
    cache: CacheSection | None = None
    budget: BudgetConfig | None = None
    model_list: list[Deployment] | None = None
    fallbacks: dict[str, list[str]] | None = None
    router_settings: RouterSettings | None = None


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
    data = read_config_file(path) if path is not None else {}
    if litellm_config is not None:
        from_yaml = read_litellm_config(litellm_config)
        both = sorted(set(from_yaml) & set(data))
        if both:
            raise ConfigError(
                f"{', '.join(both)} set in both {path} and {litellm_config}: keep them in one file"
            )
        data.update(from_yaml)
    token = FILE_DATA.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        sources = ["arguments", "environment"] + ([str(path)] if path else [])
        where = "the " + ", ".join(sources[:-1]) + " or " + sources[-1]
        raise ConfigError(_describe(exc, where=where, file_layout=False)) from None
    finally:
        FILE_DATA.reset(token)


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


_SECTIONS = frozenset({"llm", "worker", "batch", "cache", "budget", "router_settings"})


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
    env = ENV_PREFIXES.get(loc[0])
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
