"""Batch output files: one record per job, in the OpenAI Batch API output format, written whole or not at
all; and the rejects file of ``--skip-invalid``.

Nothing here touches Redis: records are built from stored results (``llmqueue.models.JobResult``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from typing import Any, TextIO

from llmqueue.batches.input import LineError
from llmqueue.llm.as_sent import without_litellm_additions
from llmqueue.models import JobResult

__all__ = [
    "json_line",
    "output_record",
    "rejected_record",
    "write_jsonl",
    "write_rejects",
    "write_results",
]


def output_record(result: JobResult | None, *, custom_id: str, job_id: str) -> dict[str, Any]:
    """One line of the output file, in the OpenAI Batch API output format.

    As OpenAI writes it: a job the provider answered (200, or an HTTP error) has ``response``
    ``{"status_code", "request_id", "body"}`` and ``error`` None, ``body`` being the provider's body as it
    sent it (an error body unchanged; a response without the fields LiteLLM adds, see
    :mod:`llmqueue.llm.as_sent`) and ``request_id`` the provider's (``x-request-id``; None where it sent
    none, and for answers from the response cache). A job that got no HTTP answer (a timeout, a lost
    connection, a job refused or cancelled before its call, an unreadable 200) has ``response`` None
    and ``error`` ``{"code", "message"}``, code the failure kind (``"missing"`` when ``result`` is None:
    the job did not finish or its result expired). llmqueue's own details sit apart under
    ``"llmqueue"``: job_id, status, deployment (the model_list deployment that answered, or None),
    attempts, cached (answered from the response cache), via (``live`` or ``batch-api``), cost (USD),
    latency_seconds (first start to end), usage, and every attempt's error.
    """
    record: dict[str, Any] = {"id": f"batch_req_{job_id}", "custom_id": custom_id}
    if result is None:
        message = f"no result for job {job_id}: it has not finished, or its result expired"
        record |= {"response": None, "error": {"code": "missing", "message": message}}
        record["llmqueue"] = {
            "job_id": job_id,
            "status": "missing",
            "deployment": None,
            "attempts": 0,
            "cached": False,
            "via": None,
            "cost": None,
            "latency_seconds": None,
            "usage": None,
            "errors": [],
        }
        return record
    if result.status == "succeeded":
        body = without_litellm_additions(result.response or {})
        response = {"status_code": 200, "request_id": result.request_id, "body": body}
        record |= {"response": response, "error": None}
    else:
        record |= _failure(result)
    record["llmqueue"] = {
        "job_id": job_id,
        "status": result.status,
        "deployment": result.deployment,
        "attempts": result.attempts,
        "cached": result.cached,
        "via": result.via,
        "cost": result.cost,
        "latency_seconds": result.timings.run_seconds,
        "usage": result.usage.model_dump() if result.usage else None,
        "errors": [error.model_dump(mode="json") for error in result.errors],
    }
    return record


def rejected_record(err: LineError) -> dict[str, Any]:
    """One line of the rejects file written for ``--skip-invalid``: ``{"line", "reason", "raw"}``."""
    return {"line": err.line, "reason": err.reason, "raw": err.raw}


def write_jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write each record as one line of JSON to ``out``; returns how many were written.

    UTF-8 is kept as is, except what some readers take for a line break (U+0085, U+2028, U+2029, which
    ``str.splitlines()`` splits on) and lone surrogates (which UTF-8 cannot hold): those are written as
    ``\\uXXXX`` escapes, so every record is exactly one line whichever way the file is read.
    """
    count = 0
    for record in records:
        out.write(json_line(record) + "\n")
        count += 1
    return count


_LINE_BREAKING = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def json_line(record: Any) -> str:
    """``record`` as one line of JSON text (see ``write_jsonl``)."""
    return _LINE_BREAKING.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(record, ensure_ascii=False))


def _failure(result: JobResult) -> dict[str, Any]:
    """``response`` and ``error`` of a failed or cancelled result: the provider's HTTP error answer as
    ``response``, or else ``error``."""
    last = result.errors[-1] if result.errors else None
    status_code = last.status_code if last else None
    if last is not None and result.status == "failed" and status_code is not None and status_code >= 400:
        body = result.error_body if result.error_body is not None else result.response
        if body is None:  # a result stored before error bodies were kept
            body = {"error": {"message": last.message, "type": None, "param": None, "code": None}}
        response = {"status_code": status_code, "request_id": result.request_id, "body": body}
        return {"response": response, "error": None}
    code = last.kind if last else result.status
    message = last.message if last else f"the job was {result.status} without a recorded error"
    return {"response": None, "error": {"code": code, "message": message}}


async def write_results(
    results: AsyncIterable[tuple[str, str, JobResult | None]], output: Path, *, failed_only: bool = False
) -> list[str]:
    """Write ``(job_id, custom_id, result)`` records in order (OpenAI Batch output); return failure lines.

    The file appears whole or not at all: it is written as ``OUTPUT.partial`` and renamed at the end.
    """
    failures: list[str] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            async for job_id, custom_id, result in results:
                if result is None or not result.ok:
                    reason = result.errors[-1].message if result and result.errors else "no result"
                    failures.append(f"{custom_id}: {reason}")
                elif failed_only:
                    continue
                write_jsonl([output_record(result, custom_id=custom_id, job_id=job_id)], out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind (an unknown batch, an interrupt)
        raise
    tmp.replace(output)
    return failures


def write_rejects(rejected: list[LineError], path: Path) -> None:
    """Write the rejected lines of a ``--skip-invalid`` submission, one record each."""
    with path.open("w", encoding="utf-8") as out:
        write_jsonl((rejected_record(err) for err in rejected), out)
