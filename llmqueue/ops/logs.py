"""Worker logs: one line per job event, as text or as JSON, with secrets scrubbed.

:class:`JobLog` is the event sink (each event on the ``llmqueue.jobs`` logger, its fields in the
record's ``job_event``); :func:`configure_logging` installs the formatter for ``--log-format``. A JSON
line of a job event holds the event's set fields, for example::

    {"time": "2026-11-24T04:37:20.512+00:00", "level": "INFO", "logger": "llmqueue.jobs",
     "event": "succeeded", "job_id": "prompts:00000001", "batch_id": "prompts", "model": "openai/gpt-4o",
     "scope": "openai/gpt-4o", "attempt": 1, "latency": 0.41, "prompt_tokens": 12,
     "completion_tokens": 30, "cost": 0.00012, "worker_id": "host:7:ab12cd"}

``event`` is the step (``started``, ``succeeded``, ``failed``, ``retrying``, ``deferred`` …, see
``llmqueue.ops.events``), ``status_code`` the provider's HTTP status on a failed call, ``message`` its error.
Other log records become ``{"time", "level", "logger", "message"}``. Every string is passed through
:func:`llmqueue.redaction.redact` with the configured API keys, in both formats.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from llmqueue.model_list import resolve
from llmqueue.ops.events import JobEvent, log_event
from llmqueue.redaction import redact
from llmqueue.settings import Settings

__all__ = ["JobLog", "JsonFormatter", "LogFormat", "RedactingFormatter", "configure_logging", "secrets_of"]

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def secrets_of(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """What must never reach a log: every configured API key (model_list credentials too, read from
    ``environ``, by default this process's environment) and the Redis password."""
    found: list[str] = []
    if settings.model_list:
        resolved = resolve(settings.model_list, os.environ if environ is None else environ)
        found += [secret for deployment in resolved for secret in deployment.secrets]
    for llm in [settings.llm, *(settings.llm_for(name) for name in settings.llm_groups)]:
        if llm.api_key is not None:
            found.append(llm.api_key.get_secret_value())
    redis_password = urlsplit(settings.redis_url.get_secret_value()).password
    if redis_password:
        found.append(redis_password)
    return list(dict.fromkeys(found))


class JobLog:
    """An event sink: each job event as one log line on ``llmqueue.jobs``, its message scrubbed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(secrets)

    def __call__(self, event: JobEvent) -> None:
        if event.message:
            event = replace(event, message=redact(event.message, self.secrets))
        log_event(event)


class RedactingFormatter(logging.Formatter):
    """The standard text formatter, with ``secrets`` (and URL passwords, key-like strings) masked."""

    def __init__(self, fmt: str = TEXT_FORMAT, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a job event's fields replace the text message (module docstring)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "job_event", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        scrubbed = {k: redact(v, self.secrets) if isinstance(v, str) else v for k, v in entry.items()}
        return json.dumps(scrubbed, default=str, ensure_ascii=False)


def configure_logging(
    log_format: LogFormat = "text", *, verbose: bool = False, secrets: Iterable[str] = ()
) -> None:
    """Log to stderr in ``log_format``, replacing the root logger's handlers.

    Job events (INFO on ``llmqueue.jobs``) are shown with ``verbose`` or the JSON format; otherwise only
    warnings (failed and invalid jobs) are. ``verbose`` also shows arq's and llmqueue's other INFO lines.
    """
    handler = logging.StreamHandler()
    secrets = tuple(secrets)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(secrets))
    else:
        handler.setFormatter(RedactingFormatter(TEXT_FORMAT, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    show_jobs = verbose or log_format == "json"
    logging.getLogger("llmqueue").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("llmqueue.jobs").setLevel(logging.INFO if show_jobs else logging.WARNING)
