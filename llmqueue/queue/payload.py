"""JSON in place of arq's default pickle: nothing read from Redis is ever unpickled.

A job is stored once, compactly: its fields at their default values are left out (reading it back
through ``Job`` restores them), and a payload of more than ``COMPRESS_ABOVE`` bytes is stored deflated
behind the ``COMPRESSED`` marker when that makes it smaller. Plain JSON payloads (those of earlier
versions, or short ones) read as before.

A payload that is neither valid JSON of arq's job shape nor a valid compressed one still becomes a call
of the job function, with an ``invalid`` marker in place of the job, so the worker records a failed
result instead of arq dropping the job with a traceback.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmqueue.models import Job

JOB_FUNCTION = "run_job"
INVALID_MARKER = "__llmqueue_invalid_payload__"
COMPRESSED = b"z"
"""The first byte of a deflated payload (raw deflate follows): no JSON text starts with it."""
COMPRESS_ABOVE = 512
"""Payloads up to this many bytes are stored as JSON: below it deflating saves little and costs time."""
MAX_EXPANDED = 64 << 20
"""A compressed payload that would expand past this many bytes is refused (not a job llmqueue wrote)."""
# Deflate's fastest level with a 2 KB window and a small state: on a prompt of a few KB the output is
# within a few percent of level 6's, and setting up the state (most of the time on short input) is cheap.
_DEFLATE = (1, zlib.DEFLATED, -11, 4)
_ARQ_FIELDS = ("t", "f", "a", "k", "et")


def serialize(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def deserialize_job(raw: bytes) -> dict[str, Any]:
    """arq's job dict from its bytes; garbage becomes a job carrying the reason it is invalid."""
    if raw[:1] == COMPRESSED:
        try:
            raw = _inflate(raw[1:])
        except ValueError as exc:
            return _invalid(f"payload is not JSON (it is marked compressed, but {exc})")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return _invalid(f"payload is not JSON ({exc.__class__.__name__}: {exc})")
    if not isinstance(data, dict) or any(field not in data for field in _ARQ_FIELDS):
        return _invalid("payload is JSON but not an llmqueue job")
    if data["f"] != JOB_FUNCTION or not isinstance(data["a"], list) or len(data["a"]) != 1:
        return _invalid(f"payload names function {data.get('f')!r} with unexpected arguments")
    return data


def job_argument(raw: bytes) -> Any:
    """What the runner is handed for a payload: the job dict it carries, or the invalid marker."""
    return deserialize_job(raw)["a"][0]


def arq_job(job: Job, enqueue_time_ms: int) -> bytes:
    """The bytes arq's worker reads for one llmqueue job: the job without its default values,
    deflated when it is longer than ``COMPRESS_ABOVE`` bytes and that makes it shorter."""
    fields = job.model_dump_json(exclude_defaults=True).encode()
    data = b'{"t":null,"f":"%s","a":[%s],"k":{},"et":%d}' % (JOB_FUNCTION.encode(), fields, enqueue_time_ms)
    if len(data) <= COMPRESS_ABOVE:
        return data
    deflater = zlib.compressobj(*_DEFLATE)
    deflated = COMPRESSED + deflater.compress(data) + deflater.flush()
    return deflated if len(deflated) < len(data) else data


def invalid_reason(arg: Any) -> str | None:
    """The reason, when the job argument is the marker of an undecodable payload."""
    if isinstance(arg, dict) and INVALID_MARKER in arg:
        return str(arg[INVALID_MARKER])
    return None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
    try:
        expanded = inflater.decompress(data, MAX_EXPANDED)
    except zlib.error as exc:
        raise ValueError(f"does not inflate: {exc}") from None
    if inflater.unconsumed_tail or (len(expanded) == MAX_EXPANDED and not inflater.eof):
        raise ValueError(f"expands past {MAX_EXPANDED} bytes")
    if not inflater.eof:
        raise ValueError("is cut short")
    return expanded


def _invalid(reason: str) -> dict[str, Any]:
    return {"t": None, "f": JOB_FUNCTION, "a": [{INVALID_MARKER: reason}], "k": {}, "et": 0}
