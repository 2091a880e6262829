"""JSON in place of arq's default pickle: nothing read from Redis is ever unpickled.

A payload that is not valid JSON of arq's job shape still becomes a call of the job function, with
an ``invalid`` marker in place of the job, so the worker records a failed result instead of arq
dropping the job with a traceback.
"""

from __future__ import annotations

import json
from typing import Any

JOB_FUNCTION = "run_job"
INVALID_MARKER = "__llmqueue_invalid_payload__"
_ARQ_FIELDS = ("t", "f", "a", "k", "et")


def serialize(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def deserialize_job(raw: bytes) -> dict[str, Any]:
    """arq's job dict from JSON bytes; garbage becomes a job carrying the reason it is invalid."""
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


def arq_job(job: dict[str, Any], enqueue_time_ms: int) -> bytes:
    """The bytes arq's worker reads for one llmqueue job."""
    return serialize({"t": None, "f": JOB_FUNCTION, "a": [job], "k": {}, "et": enqueue_time_ms})


def invalid_reason(arg: Any) -> str | None:
    """The reason, when the job argument is the marker of an undecodable payload."""
    if isinstance(arg, dict) and INVALID_MARKER in arg:
        return str(arg[INVALID_MARKER])
    return None


def _invalid(reason: str) -> dict[str, Any]:
    return {"t": None, "f": JOB_FUNCTION, "a": [{INVALID_MARKER: reason}], "k": {}, "et": 0}
