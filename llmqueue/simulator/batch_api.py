"""The simulated provider's Batch API: ``/v1/files`` and ``/v1/batches`` in OpenAI's shape.

A batch moves ``validating`` → ``in_progress`` → ``completed`` on the provider's clock
(``validating_seconds``, ``in_progress_seconds``), writing an output file of answered lines and an error
file of lines it refused (a body the live endpoint would answer 400, or a line whose ``url`` is not the
batch's endpoint). It serves ``/v1/chat/completions`` and ``/v1/embeddings`` batches, each line answered
as the live endpoint answers it. ``expire_next(n)`` makes the next ``n`` batches end ``expired``
instead, their lines in the error file as ``batch_expired``, as OpenAI does after the completion window.
``cancel`` moves a batch to ``cancelled`` with what it answered.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llmqueue.simulator.wire import chat_body, chat_usage, embedding_usage, embeddings_body, error_response

_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    created: float
    created_at: int
    expires: bool
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    ended_at: int | None = None

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": None,
            "expires_at": self.created_at + 86400,
            "completed_at": self.ended_at if self.status == "completed" else None,
            "expired_at": self.ended_at if self.status == "expired" else None,
            "cancelled_at": self.ended_at if self.status == "cancelled" else None,
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }


class BatchApi:
    """Files and batches of one simulated provider; ``register`` adds its routes to the provider's app."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        authorized: Callable[[web.Request], bool],
        completion_tokens: int,
        validating_seconds: float = 0.1,
        in_progress_seconds: float = 0.3,
    ) -> None:
        self._clock = clock
        self._authorized = authorized
        self.completion_tokens = completion_tokens
        self.validating_seconds = validating_seconds
        self.in_progress_seconds = in_progress_seconds
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.lines_answered = 0
        self._expire = 0
        self._ids = itertools.count(1)

    def expire_next(self, count: int) -> None:
        """The next ``count`` batches created end ``expired`` without answering a line."""
        self._expire += count

    def summary(self) -> list[dict[str, Any]]:
        """Each batch created, in order: its id, endpoint, status and the ``custom_id`` of each line of
        its input file (what a test checks to know what was sent)."""
        return [
            {
                "id": batch.id,
                "endpoint": batch.endpoint,
                "status": batch.status,
                "custom_ids": [_custom_id(line) for line in _lines(self.files[batch.input_file_id].content)],
            }
            for batch in self.batches.values()
        ]

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._create_file)
        app.router.add_get("/v1/files/{file_id}", self._get_file)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._get_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_batch)

    async def _create_file(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, "Incorrect API key provided.")
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or purpose != "batch":
            return error_response(400, "send a multipart 'file' with purpose 'batch'")
        stored = _File(
            id=f"file-sim-{next(self._ids)}",
            filename=upload.filename,
            purpose="batch",
            content=upload.file.read(),
            created_at=int(time.time()),
        )
        self.files[stored.id] = stored
        return web.json_response(stored.json())

    async def _get_file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if not self._authorized(request) or stored is None:
            return error_response(404, "No such File object.")
        return web.json_response(stored.json())

    async def _file_content(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if not self._authorized(request) or stored is None:
            return error_response(404, "No such File object.")
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, "Incorrect API key provided.")
        body = await request.json()
        if body.get("endpoint") not in _ENDPOINTS or body.get("input_file_id") not in self.files:
            return error_response(400, f"unknown input_file_id or endpoint (supported: {_ENDPOINTS})")
        expires = self._expire > 0
        self._expire -= 1 if expires else 0
        batch = _Batch(
            id=f"batch_sim_{next(self._ids)}",
            input_file_id=body["input_file_id"],
            endpoint=body["endpoint"],
            completion_window=body.get("completion_window", "24h"),
            metadata=body.get("metadata"),
            created=self._clock(),
            created_at=int(time.time()),
            expires=expires,
        )
        batch.counts["total"] = len(_lines(self.files[batch.input_file_id].content))
        self.batches[batch.id] = batch
        return web.json_response(batch.json())

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if not self._authorized(request) or batch is None:
            return error_response(404, "No such Batch object.")
        self._advance(batch)
        return web.json_response(batch.json())

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if not self._authorized(request) or batch is None:
            return error_response(404, "No such Batch object.")
        self._advance(batch)
        if batch.status in ("validating", "in_progress"):
            self._finish(batch, "cancelled")
        return web.json_response(batch.json())

    def _advance(self, batch: _Batch) -> None:
        age = self._clock() - batch.created
        if batch.status == "validating" and age >= self.validating_seconds:
            batch.status = "in_progress"
        if batch.status == "in_progress" and age >= self.validating_seconds + self.in_progress_seconds:
            self._finish(batch, "expired" if batch.expires else "completed")

    def _finish(self, batch: _Batch, status: str) -> None:
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for number, line in enumerate(_lines(self.files[batch.input_file_id].content), start=1):
            if status == "completed":
                answered, entry = self._answer(line, number, batch.endpoint)
                (outputs if answered else errors).append(entry)
            else:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append(_error_entry(line, number, code, f"the batch was {status} first"))
        batch.status = status
        batch.ended_at = int(time.time())
        batch.counts["completed"], batch.counts["failed"] = len(outputs), len(errors)
        if outputs:
            batch.output_file_id = self._result_file(batch, "output", outputs)
        if errors:
            batch.error_file_id = self._result_file(batch, "error", errors)

    def _answer(self, line: str, number: int, endpoint: str) -> tuple[bool, dict[str, Any]]:
        call_id = next(self._ids)
        try:
            request = json.loads(line)
            body = request["body"]
            if request.get("url") != endpoint:
                raise ValueError(
                    f"the line's url {request.get('url')!r} is not the batch's endpoint {endpoint}"
                )
            answer = self._body(endpoint, body, call_id)
        except (ValueError, KeyError, TypeError) as exc:
            return False, _error_entry(line, number, "invalid_request", str(exc), status_code=400)
        self.lines_answered += 1
        response = {"status_code": 200, "request_id": f"req_sim_{call_id}", "body": answer}
        return True, {
            "id": f"batch_req_{call_id}",
            "custom_id": request.get("custom_id"),
            "response": response,
            "error": None,
        }

    def _body(self, endpoint: str, body: dict[str, Any], call_id: int) -> dict[str, Any]:
        """What the live endpoint would answer ``body`` (raises ValueError where it would answer 400)."""
        if endpoint == "/v1/embeddings":
            return embeddings_body(body, embedding_usage(body))
        return chat_body(body, chat_usage(body, self.completion_tokens), call_id)

    def _result_file(self, batch: _Batch, kind: str, entries: list[dict[str, Any]]) -> str:
        content = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
        stored = _File(
            id=f"file-sim-{next(self._ids)}",
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            content=content,
            created_at=int(time.time()),
        )
        self.files[stored.id] = stored
        return stored.id


def _lines(content: bytes) -> list[str]:
    return [line for line in content.decode("utf-8").splitlines() if line.strip()]


def _custom_id(line: str) -> Any:
    try:
        return json.loads(line).get("custom_id")
    except (ValueError, AttributeError):
        return None


def _error_entry(
    line: str, number: int, code: str, message: str, status_code: int | None = None
) -> dict[str, Any]:
    custom_id = _custom_id(line)
    response = None
    if status_code is not None:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        response = {"status_code": status_code, "request_id": f"req_line_{number}", "body": body}
    return {
        "id": f"batch_req_line_{number}",
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }
