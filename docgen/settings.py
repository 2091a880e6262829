"""The settings reference: every key of config.toml and its environment variable, from the models.

Sections, keys, types, defaults and descriptions come from the pydantic models in
``llmqueue.settings`` (and ``llmqueue.model_list`` for deployments) as they are at build time. A field
the code gives no ``description`` takes its text from ``NOTES``; a field with neither fails the tests.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from docgen.markdown import cell, code, prose, table
from llmqueue.settings import Settings
from llmqueue.settings.sources import ENV_PREFIXES, REDIS_FIELDS

# Top-level keys the environment can set: the names the settings' environment source keeps.
TOP_LEVEL_ENV = {name: name.upper() for name in REDIS_FIELDS}
# How a top-level field is written in config.toml when not under its own name.
TOML_NAMES = {"llm_groups": "[llm.<name>]"}

# Descriptions for fields whose code gives none (keyed ``section.field``; the top level is ``.field``).
# A description in the code wins: once a field has one, its note here fails the tests and goes.
NOTES: dict[str, str] = {
    ".redis_url": "the Redis every producer and worker shares; `rediss://` for TLS, "
    "`redis://user:password@host:port/db` for a password or an ACL user",
    ".limits": 'a rate limit for one scope: `[limits."<scope>"]`, see below',
    "llm.model": "LiteLLM model string for jobs that name none",
    "llm.api_key": "the provider key; it stays in the worker and never reaches Redis",
    "llm.base_url": "the API base (a proxy, Azure, a local server)",
    "llm.api_version": "passed to LiteLLM (Azure)",
    "llm.embedding_model": "model for embedding jobs that name none",
    "llm.embedding_deployment_name": "used instead of `embedding_model` when set",
    "llm.drop_params": "LiteLLM drops parameters the provider does not support",
    "llm.disable_vision": "image parts are stripped from messages before sending",
    "llm.caching_prompt": "`cache_control` marks on the system prompt and the last two user messages, for "
    "models LiteLLM says support prompt caching",
    "llm.retry_multiplier": "the delay before retry n is `retry_multiplier * 2^(n-1)` seconds, clamped to "
    "`retry_min_wait`..`retry_max_wait`",
    "worker.queue_name": "the arq queue producers and workers share",
    "cache.enabled": "`false` turns the response cache off (top-level `cache = false` does the same)",
    "cache.backend": '`"disk"`: a SQLite file under `dir`; `"redis"`: the queue\'s own Redis (a '
    "long-running one)",
    "model_list.model_name": "the name jobs ask for",
    "model_list.litellm_params": "how to call this deployment (see `litellm_params` below)",
    "model_list.model_info": "`id` names the deployment (default `<model_name>#<index>`)",
    "litellm_params.model": "the LiteLLM model string this deployment calls",
    "litellm_params.api_key": "its key; `os.environ/NAME` reads it from the worker's environment",
    "litellm_params.api_base": "its endpoint",
    "litellm_params.api_version": "passed to LiteLLM (Azure)",
}


@dataclass(frozen=True)
class Row:
    """One setting as the reference shows it."""

    key: str
    env: str | None
    type: str
    default: str
    description: str


def note_key(section: str, name: str) -> str:
    return f"{section}.{name}"


def describe(section: str, name: str, field: FieldInfo) -> str:
    """The field's description from the code, else its note; empty when it has neither."""
    return field.description or NOTES.get(note_key(section, name), "")


def type_name(annotation: Any) -> str:
    """``float | None``, ``list[str]``, ``"disk" | "redis"``: a type as a user reads it."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(f'"{arg}"' if isinstance(arg, str) else repr(arg) for arg in annotation.__args__)
    if origin is not None:
        args = ", ".join(type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    if annotation is SecretStr:
        return "str (secret)"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def constraints(field: FieldInfo) -> str:
    """The field's bounds (``≥ 0``, ``> 0, < 1``), or empty."""
    marks = {
        annotated_types.Ge: ("ge", "≥"),
        annotated_types.Gt: ("gt", ">"),
        annotated_types.Le: ("le", "≤"),
        annotated_types.Lt: ("lt", "<"),
        annotated_types.MinLen: ("min_length", "length ≥"),
    }
    parts = []
    for meta in field.metadata:
        for kind, (attribute, mark) in marks.items():
            if isinstance(meta, kind):
                bound = getattr(meta, attribute)
                parts.append(f"{mark} {bound:g}" if isinstance(bound, float) else f"{mark} {bound}")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in config.toml; "—" when unset (None) or required."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return toml_value(value)


def toml_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, BaseModel):
        return "see its section"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | dict) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def model_rows(model: type[BaseModel], section: str, env_prefix: str | None) -> list[Row]:
    rows = []
    for name, field in model.model_fields.items():
        if section == "model_list" and name == "index":
            continue  # set by the parser from the entry's position, not written by users
        kind = type_name(field.annotation)
        bounds = constraints(field)
        rows.append(
            Row(
                key=name,
                env=f"{env_prefix}{name.upper()}" if env_prefix else None,
                type=f"{kind} ({bounds})" if bounds else kind,
                default=default_text(field),
                description=describe(section, name, field),
            )
        )
    return rows


def top_level_rows() -> list[Row]:
    rows = []
    for name, field in Settings.model_fields.items():
        if _section_model(field.annotation) is not None and name not in ("limits", "model_list"):
            continue
        rows.append(
            Row(
                key=TOML_NAMES.get(name, name),
                env=TOP_LEVEL_ENV.get(name),
                type="table" if name == "limits" else type_name(field.annotation),
                default=toml_value(field.get_default(call_default_factory=True)),
                description=describe("", name, field),
            )
        )
    return rows


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section: ``[llm]`` (a model), ``[limits."<scope>"]`` (dict of), ``[[model_list]]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    if args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return args[-1]
    return None


def sections() -> list[tuple[str, str, str, list[Row]]]:
    """(heading, anchor, intro, rows) for the top level and each section of config.toml."""
    out = [("Top level", "top-level", "Keys outside any table.", top_level_rows())]
    for name, field in Settings.model_fields.items():
        model = _section_model(field.annotation)
        if model is None:
            continue
        prefix = ENV_PREFIXES.get(name)
        heading = {"limits": '[limits."<scope>"]', "model_list": "[[model_list]]"}.get(name, f"[{name}]")
        env_note = f" Environment: `{prefix}<KEY>`." if prefix else " config.toml only (no environment)."
        intro = prose(model.__doc__) + env_note
        if name == "llm":
            intro += (
                " A named group `[llm.<name>]` takes the same keys and overrides `[llm]` for the jobs that"
                " name it."
            )
        out.append((heading, name.replace("_", "-"), intro, model_rows(model, name, prefix)))
        if name == "model_list":
            params = Settings.model_fields["model_list"]
            deployment = _section_model(params.annotation)
            assert deployment is not None
            litellm = _section_model(deployment.model_fields["litellm_params"].annotation)
            assert litellm is not None
            intro = prose(litellm.__doc__) + " config.toml only, or a LiteLLM `config.yaml`."
            out.append(
                (
                    "[[model_list]] litellm_params",
                    "litellm-params",
                    intro,
                    model_rows(litellm, "litellm_params", None),
                )
            )
    return out


def documented_fields() -> dict[str, FieldInfo]:
    """Every field the reference shows, by its ``NOTES`` key (``section.field``; top level ``.field``)."""
    out = {note_key("", name): field for name, field in Settings.model_fields.items()}
    for name, field in Settings.model_fields.items():
        model = _section_model(field.annotation)
        if model is None:
            continue
        out.update({note_key(name, sub): info for sub, info in model.model_fields.items()})
        if name == "model_list":
            litellm = _section_model(model.model_fields["litellm_params"].annotation)
            assert litellm is not None
            out.update({note_key("litellm_params", sub): info for sub, info in litellm.model_fields.items()})
    return out


def all_rows() -> list[Row]:
    return [row for *_, rows in sections() for row in rows]


def render() -> str:
    """The generated part of the settings reference page."""
    parts = []
    for heading, anchor, intro, rows in sections():
        parts.append(f"## {cell(heading)} {{#{anchor}}}\n\n{intro}\n")
        parts.append(
            table(
                ["key", "environment", "type", "default", "description"],
                (
                    [
                        code(row.key),
                        code(row.env) if row.env else "—",
                        cell(row.type),
                        code(row.default)
                        if row.default not in ("—", "required", "see its section")
                        else row.default,
                        cell(row.description),
                    ]
                    for row in rows
                ),
            )
        )
        parts.append("")
    return "\n".join(parts)
