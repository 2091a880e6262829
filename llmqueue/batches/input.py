"""Batch input files: JSONL requests in, jobs (or the reasons a line is not one) out. Pure and streaming.

Each non-blank input line is one request, in either of two forms:

- the OpenAI Batch API form, ``{"custom_id", "method": "POST", "url", "body"}`` with ``url``
  ``/v1/chat/completions`` (body: ``messages`` …) or ``/v1/embeddings`` (body: ``input`` …);
- the short form, the body itself with an optional ``custom_id``: ``{"messages": [...], ...}`` for chat,
  or ``{"input": ...}`` for embeddings.

In both, ``model`` is optional and every other key becomes one of the job's ``params``, except the
top-level ``priority`` (a name, ``batch``/``default``/``interactive``, or an integer 0-9; also written
``{"llmqueue": {"priority": ...}}``), which sets the line's priority over the file's. A line becomes a
``Job`` whose id is derived from the batch id and the line number (``job_id_for``), so that
submitting the same file again for the same batch names the same jobs. A line that cannot become a job
becomes a ``LineError`` carrying its line number (1-based, blank lines counted) and the reason.

Nothing here touches Redis; files are read line by line and only the custom ids (and, in a check, the
first job of each model) are kept in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmqueue.errors import BatchFileError, InvalidBatchFileError, JobValidationError, LLMQueueError
from llmqueue.models import PRIORITIES, Job, JobKind, parse_priority

__all__ = [
    "BatchFileError",
    "FileCheck",
    "LineError",
    "Refuser",
    "bad_lines_text",
    "check_file",
    "invalid_file_error",
    "iter_jobs",
    "job_id_for",
    "read_requests",
    "require_requests",
]

RAW_LIMIT = 500
"""Characters of an invalid line kept in its ``LineError``."""

MAX_STORED_ERRORS = 1000
"""``check_file`` keeps this many ``LineError``s; it counts all of them."""

URL_KINDS: dict[str, JobKind] = {"/v1/chat/completions": "chat", "/v1/embeddings": "embedding"}
# A line that encodes as UTF-8 holds no lone surrogate: only a JSON escape in it can make one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BATCH_API_KEYS = frozenset({"custom_id", "method", "url", "body"})
_LLMQUEUE_KEYS = frozenset({"priority"})
_INPUT_FIELD: dict[JobKind, str] = {"chat": "messages", "embedding": "input"}


Refuser = Callable[[Job], "str | None"]
"""Why a valid job may still not run (``llmqueue.llm.policy.submission_refusal``), or None."""


class _RejectedLine(LLMQueueError):
    """Internal: why one line cannot become a job. Never escapes this module."""


@dataclass
class LineError:
    """An input line that is not a valid request: its 1-based line number, why, and its start."""

    line: int
    reason: str
    raw: str


@dataclass
class FileCheck:
    """The outcome of ``check_file``.

    ``lines`` counts request lines (blank lines excluded), ``valid`` those that became jobs, and
    ``error_count`` the others; ``errors`` holds the first ``MAX_STORED_ERRORS`` of them.
    """

    lines: int = 0
    valid: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    samples: dict[tuple[JobKind, str | None, str | None], Job] = field(default_factory=dict)
    """The first valid job of each kind, model and settings group: what says where the file's jobs are
    sent (``job_model``), so the checks of a cost budget need no second reading of the file."""
    checked_through: int = 0
    """The file's line number (1-based, blank lines counted) of the last request line checked so far."""

    @property
    def ok(self) -> bool:
        """True when every request line is valid (an empty file is ok, and has ``lines == 0``)."""
        return self.error_count == 0


def job_id_for(batch_id: str, line: int) -> str:
    """The id of the job made from line ``line`` (1-based) of a batch: ``<batch_id>:<line:08d>``."""
    return f"{batch_id}:{line:08d}"


def read_requests(
    lines: Iterable[str],
    *,
    batch_id: str,
    default_model: str | None = None,
    llm_config: str | None = None,
    priority: int = PRIORITIES["batch"],
    refuse: Refuser | None = None,
    first_line: int = 1,
) -> Iterator[Job | LineError]:
    """Turn request lines into jobs, one at a time, in order; blank lines are skipped.

    ``first_line`` is the line number of the first of ``lines`` (a later part of a file: a block
    of a submitted batch); a custom id is checked for duplicates among ``lines`` only.

    ``default_model`` is the model of chat lines that name none (None leaves ``job.model`` unset, so the
    worker uses its configured model; embedding lines that name none always leave it unset, for the
    worker's ``embedding_model``); ``llm_config`` names the settings group of every job.
    ``priority`` is that of lines that set none.
    ``lines`` is consumed lazily: one line is read per value produced (plus any blank lines before it).
    ``refuse`` says why a valid job may still not run (the workers' policy), making its line a LineError.

    Raises JobValidationError at once when the arguments themselves cannot make a valid job (a
    ``batch_id`` that cannot form a job id, an empty model or config name).
    """
    _check_arguments(batch_id, default_model, llm_config)
    return _read(lines, batch_id, default_model, llm_config, priority, refuse, first_line)


def iter_jobs(
    path: Path,
    *,
    batch_id: str,
    default_model: str | None = None,
    llm_config: str | None = None,
    priority: int = PRIORITIES["batch"],
    refuse: Refuser | None = None,
) -> Iterator[Job | LineError]:
    """``read_requests`` over the lines of the UTF-8 file at ``path``, read as they are needed.

    Raises BatchFileError at once if the file cannot be opened, and while iterating if a line is not UTF-8.
    """
    _check_readable(path)
    return read_requests(
        _file_lines(path),
        batch_id=batch_id,
        default_model=default_model,
        llm_config=llm_config,
        priority=priority,
        refuse=refuse,
    )


def check_file(
    path: Path,
    *,
    batch_id: str,
    default_model: str | None = None,
    llm_config: str | None = None,
    max_errors: int = MAX_STORED_ERRORS,
    refuse: Refuser | None = None,
    into: FileCheck | None = None,
) -> FileCheck:
    """Validate every line of ``path``, keeping no jobs: the counts and the first ``max_errors`` errors.

    ``into`` is the FileCheck to fill (and return) as the lines are read, for a caller that watches
    the check's progress from another thread (``llmqueue.batches.check_ahead``).
    """
    check = FileCheck() if into is None else into
    items = iter_jobs(
        path, batch_id=batch_id, default_model=default_model, llm_config=llm_config, refuse=refuse
    )
    for item in items:
        check.lines += 1
        if isinstance(item, LineError):
            check.error_count += 1
            if len(check.errors) < max_errors:
                check.errors.append(item)
            check.checked_through = item.line
        else:
            check.valid += 1
            check.samples.setdefault((item.kind, item.model, item.llm_config), item)
            check.checked_through = item.metadata["line"]
    return check


def _check_arguments(batch_id: str, default_model: str | None, llm_config: str | None) -> None:
    probe = {
        "id": job_id_for(batch_id, 1),
        "model": default_model,
        "llm_config": llm_config,
        "messages": [{"role": "user", "content": "probe"}],
    }
    try:
        Job.parse(probe)
    except JobValidationError as exc:
        raise JobValidationError(
            f"batch {batch_id!r} (default model {default_model!r}, llm_config {llm_config!r}) cannot make "
            f"valid jobs: {exc}; a batch id may hold letters, digits and _ . : @ / - only"
        ) from None


def _read(
    lines: Iterable[str],
    batch_id: str,
    default_model: str | None,
    llm_config: str | None,
    priority: int,
    refuse: Refuser | None,
    first_line: int,
) -> Iterator[Job | LineError]:
    seen: set[str] = set()
    for number, line in enumerate(lines, start=first_line):
        text = line.strip()
        if number == 1:
            text = text.removeprefix("\ufeff").strip()
        if not text:
            continue
        item: Job | LineError
        try:
            request = _parse_line(text, number, seen)
            text_is_utf8 = _encodes(text) and ("\\u" not in text or _SURROGATE_ESCAPE.search(text) is None)
            item = _to_job(request, number, batch_id, default_model, llm_config, priority, text_is_utf8)
            refused = refuse(item) if refuse is not None else None
            if refused is not None:
                raise _RejectedLine(f"invalid job: {refused}")
        except _RejectedLine as exc:
            item = LineError(line=number, reason=str(exc), raw=line.rstrip("\r\n")[:RAW_LIMIT])
        yield item


@dataclass
class _Request:
    custom_id: str
    kind: JobKind
    body: dict[str, Any]
    priority: int | None = None


def _parse_line(text: str, number: int, seen: set[str]) -> _Request:
    try:
        data = _decode_json(text)
    except (ValueError, RecursionError) as exc:
        raise _RejectedLine(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _RejectedLine(f"expected a JSON object, got {_json_type(data)}")
    custom_id = data.pop("custom_id", None)
    if custom_id is None:
        custom_id = f"line-{number}"
    elif not isinstance(custom_id, str):
        raise _RejectedLine(f"custom_id must be a string, got {_json_type(custom_id)}")
    elif not custom_id:
        raise _RejectedLine("custom_id is empty")
    if custom_id in seen:
        raise _RejectedLine(f"duplicate custom_id {custom_id!r}")
    seen.add(custom_id)
    priority = _line_priority(data)
    if _BATCH_API_KEYS.intersection(data):
        kind, body = _from_batch_api(data)
    else:
        kind, body = _kind_of(data), data
    return _Request(custom_id=custom_id, kind=kind, body=body, priority=priority)


def _line_priority(data: dict[str, Any]) -> int | None:
    """The line's own priority (top-level ``priority`` or ``llmqueue.priority``), taken out of ``data``."""
    options = data.pop("llmqueue", {})
    if not isinstance(options, dict):
        raise _RejectedLine(f"llmqueue must be a JSON object, got {_json_type(options)}")
    unknown = sorted(set(options) - _LLMQUEUE_KEYS)
    if unknown:
        raise _RejectedLine(f"unknown llmqueue option(s) {', '.join(unknown)}; expected priority")
    if "priority" in data and "priority" in options:
        raise _RejectedLine("priority is set twice: top-level and in llmqueue; keep one")
    value = data.pop("priority", options.get("priority"))
    if value is None:
        return None
    try:
        return parse_priority(value)
    except ValueError as exc:
        raise _RejectedLine(str(exc)) from None


def _from_batch_api(data: dict[str, Any]) -> tuple[JobKind, dict[str, Any]]:
    unknown = sorted(set(data) - _BATCH_API_KEYS)
    if unknown:
        raise _RejectedLine(
            f"unknown field(s) {', '.join(unknown)} in a Batch API request; "
            "expected custom_id, method, url, body"
        )
    method = data.get("method", "POST")
    if method != "POST":
        raise _RejectedLine(f"method must be 'POST', got {method!r}")
    url = data.get("url")
    if url not in URL_KINDS:
        raise _RejectedLine(f"unknown url {url!r}; expected one of {', '.join(URL_KINDS)}")
    body = data.get("body")
    if not isinstance(body, dict):
        raise _RejectedLine(f"body must be a JSON object, got {_json_type(body)}")
    kind = URL_KINDS[url]
    if _INPUT_FIELD[kind] not in body:
        raise _RejectedLine(
            f"missing {_INPUT_FIELD[kind]}: a request to {url} needs body.{_INPUT_FIELD[kind]}"
        )
    return kind, body


def _kind_of(body: dict[str, Any]) -> JobKind:
    """The kind of a short-form request: chat with ``messages``, embedding with ``input`` alone."""
    if "messages" in body:
        return "chat"
    if "input" in body:
        return "embedding"
    raise _RejectedLine("missing messages: a chat request needs 'messages' (an embedding request, 'input')")


def _to_job(
    request: _Request,
    number: int,
    batch_id: str,
    default_model: str | None,
    llm_config: str | None,
    priority: int,
    text_is_utf8: bool,
) -> Job:
    body = dict(request.body)
    if "messages" in body and "input" in body:
        raise _RejectedLine(
            "has both messages and input: a chat request has messages, an embedding request input"
        )
    model = body.pop("model", None)
    # A batch line is answered whole, as the Batch API answers it: nobody reads its stream.
    body.pop("stream", None)
    body.pop("stream_options", None)
    payload: dict[str, Any] = {
        "id": job_id_for(batch_id, number),
        "kind": request.kind,
        # --model names the chat model: an embedding line that names none goes to embedding_model.
        "model": model if model is not None else default_model if request.kind == "chat" else None,
        "llm_config": llm_config,
        _INPUT_FIELD[request.kind]: body.pop(_INPUT_FIELD[request.kind]),
        "params": body,
        "metadata": {"custom_id": request.custom_id, "line": number},
        "batch_id": batch_id,
        "priority": priority if request.priority is None else request.priority,
    }
    try:
        return Job.parse(payload, text_is_utf8=text_is_utf8)
    except JobValidationError as exc:
        raise _RejectedLine(str(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""Made once: ``json.loads`` with an option makes a decoder per call, a tenth of a line's parsing."""


def _encodes(text: str) -> bool:
    """No lone surrogate in the line itself (lines given as strings may come from a lenient decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_json(text: str) -> Any:
    if text.startswith("\ufeff"):
        return json.loads(text)  # for the standard library's own error about the BOM
    return _DECODER.decode(text)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise BatchFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BatchFileError(f"{path}: is a directory, not a JSONL file") from None
    except OSError as exc:
        raise BatchFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _file_lines(path: Path) -> Iterator[str]:
    """The lines of ``path`` decoded one at a time, so a bad byte is reported with its line number."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    compression = _compression(raw) if number == 1 else None
                    if compression is not None:
                        raise BatchFileError(
                            f"{path}: is {compression}-compressed, not JSONL text; decompress it first"
                        ) from None
                    raise BatchFileError(
                        f"{path}: line {number} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "save the file as UTF-8"
                    ) from None
    except OSError as exc:
        raise BatchFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def require_requests(path: Path) -> None:
    """Raise BatchFileError when ``path`` holds no request line (empty, or blank lines only): a batch of
    nothing would never be done. Reads only up to the first request line."""
    for number, line in enumerate(_file_lines(path), start=1):
        text = line.strip()
        if number == 1:
            text = text.removeprefix("\ufeff").strip()
        if text:
            return
    raise BatchFileError(f"{path}: holds no requests (it is empty or has only blank lines); nothing to run")


_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


def _compression(start: bytes) -> str | None:
    """The compression format whose magic number ``start`` begins with, if any."""
    return next((name for magic, name in _MAGIC.items() if start.startswith(magic)), None)


def invalid_file_error(check: FileCheck, path: Path) -> InvalidBatchFileError:
    """The error for a file whose lines ``check`` found bad: the first 20 with their line numbers."""
    return InvalidBatchFileError(
        f"{path}: {check.error_count} of {check.lines} line(s) are invalid; nothing was enqueued "
        f"(use --skip-invalid to enqueue the valid ones):\n{bad_lines_text(check)}",
        check,
    )


def bad_lines_text(check: FileCheck) -> str:
    """The first 20 bad lines of ``check``, one a line with its number and reason, and how many more."""
    shown = "\n".join(f"  line {e.line}: {e.reason}" for e in check.errors[:20])
    more = check.error_count - min(20, len(check.errors))
    return shown + (f"\n  … and {more} more" if more > 0 else "")
