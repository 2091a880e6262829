"""The simulated provider's OpenAI wire format: requests read into token usage, and the JSON bodies of
chat completions, embeddings and errors, in the exact shapes OpenAI sends.

Content is deterministic: a chat answer echoes the last user message, an embedding is derived from a hash
of its text. Reading a request raises ValueError with a message fit for a 400 answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web

from llmqueue.simulator.limits import (
    Rejection,
    estimate_prompt_tokens,
    estimate_text_tokens,
    format_duration,
    message_text,
)

#: Model names listed by ``GET /v1/models``; calls may name any model.
MODELS = ("sim-model", "sim-embedding")
EMBEDDING_DIMENSIONS = 8
#: Characters of the last user message a chat answer echoes.
ECHO_CHARS = 200


BrokenShape = Literal[
    "empty_choices", "no_choices", "no_message", "truncated", "html", "empty", "lone_surrogate", "cut_stream"
]
#: Header marking a 200 sent with a broken body on purpose (so the provider's stats can count it).
BROKEN_HEADER = "x-simulator-broken"


@dataclass(frozen=True)
class Usage:
    """Tokens a call uses; ``capped`` when ``max_tokens`` cut the completion short (``max_tokens``: asked)."""

    prompt_tokens: int
    completion_tokens: int = 0
    capped: bool = False
    max_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens, as reported in the answer's ``usage``."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def charged_tokens(self) -> int:
        """What the call costs against the tokens-per-minute limit, counted the way OpenAI's limiter does:
        the prompt's characters/4 estimate plus ``max_tokens`` when the request sets it (charged up front,
        whatever the answer's length), else plus the completion."""
        return self.prompt_tokens + (self.completion_tokens if self.max_tokens is None else self.max_tokens)


def chat_usage(body: Mapping[str, Any], completion_tokens: int) -> Usage:
    """Tokens a chat request is charged: its prompt estimate plus ``completion_tokens`` capped by
    ``max_completion_tokens``/``max_tokens``. Raises ValueError for a body OpenAI would refuse."""
    _require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ValueError("'messages' must be a non-empty list of message objects")
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ValueError("'max_tokens' must be a positive integer")
    completion = completion_tokens if cap is None else min(cap, completion_tokens)
    capped = cap is not None and cap < completion_tokens
    return Usage(estimate_prompt_tokens(messages), completion, capped, cap)


def embedding_usage(body: Mapping[str, Any]) -> Usage:
    """Tokens an embeddings request is charged: each text's estimate, or a token list's length.
    Raises ValueError for bad input."""
    _require_model(body)
    items = embedding_inputs(body)
    return Usage(sum(len(item) if isinstance(item, list) else estimate_text_tokens(item) for item in items))


def embedding_inputs(body: Mapping[str, Any]) -> list[str | list[int]]:
    """The items of an embeddings ``input``: a string, a list of strings, or token-id lists."""
    raw = body.get("input")
    items: Sequence[Any] = [raw] if isinstance(raw, str) or _is_token_list(raw) else raw or []
    if not isinstance(items, list) or not items:
        raise ValueError("'input' must be a non-empty string or list")
    if not all(isinstance(item, str) or _is_token_list(item) for item in items):
        raise ValueError("'input' items must be strings or lists of token ids")
    return items


#: A line of the first user message scripting a JSON answer: ``answers: [<first>, <after 1 re-ask>, ...]``.
ANSWERS_DIRECTIVE = "answers:"


def chat_body(body: Mapping[str, Any], usage: Usage, call_id: int) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` answering ``echo: <last user message, first 200 characters>``, or,
    for a request with a JSON ``response_format``, :func:`json_answer`."""
    user_texts = [message_text(m.get("content")) for m in body["messages"] if m.get("role") == "user"]
    if isinstance(body.get("response_format"), Mapping) and body["response_format"].get("type") != "text":
        content = json_answer(body["messages"])
    else:
        content = "echo: " + (user_texts[-1][:ECHO_CHARS] if user_texts else "")
    return {
        "id": f"chatcmpl-sim-{call_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "length" if usage.capped else "stop",
            }
        ],
        "usage": _usage_json(usage),
    }


def stream_chunks(payload: Mapping[str, Any], *, include_usage: bool) -> list[dict[str, Any]]:
    """A ``chat.completion`` body as the ``chat.completion.chunk`` objects OpenAI streams: the role, one
    word of content each (with its following space), the finish reason, then the usage if asked."""
    choice = payload["choices"][0]
    content = choice["message"]["content"] or ""
    words = [w for w in content.replace(" ", " \0").split("\0") if w]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": payload["id"],
            "object": "chat.completion.chunk",
            "created": payload["created"],
            "model": payload["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": word}) for word in words]
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**chunk({}), "choices": [], "usage": payload["usage"]})
    return chunks


def json_answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """The answer to a request for JSON: scripted by an ``answers: [...]`` line (a JSON list) in the first
    user message, else ``{"echo": <last user message>}``.

    The scripted answer is the list's item at the number of assistant messages in the conversation (each
    re-ask adds one), the last item once the list runs out: ``answers: [{"answer": "x"}, {"answer": 1}]``
    answers wrong once, ``answers: ["not json"]`` always wrong. A string item is sent as it is (so it may
    be anything but JSON); any other item as its JSON.
    """
    users = [message_text(m.get("content")) for m in messages if m.get("role") == "user"]
    asked_again = sum(1 for m in messages if m.get("role") == "assistant")
    for line in (users[0] if users else "").splitlines():
        if line.strip().startswith(ANSWERS_DIRECTIVE):
            try:
                scripted = json.loads(line.strip().removeprefix(ANSWERS_DIRECTIVE))
            except json.JSONDecodeError:
                break
            if isinstance(scripted, list) and scripted:
                item = scripted[min(asked_again, len(scripted) - 1)]
                return item if isinstance(item, str) else json.dumps(item)
    return json.dumps({"echo": users[-1][:ECHO_CHARS] if users else ""})


def embeddings_body(body: Mapping[str, Any], usage: Usage) -> dict[str, Any]:
    """An OpenAI embeddings list: one deterministic unit vector per input, as floats or base64."""
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(embedding_inputs(body)):
        vector = embedding_vector(item if isinstance(item, str) else " ".join(map(str, item)))
        encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded if as_base64 else vector})
    # OpenAI's embeddings usage has no completion_tokens.
    tokens = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
    return {"object": "list", "data": data, "model": body["model"], "usage": tokens}


def embedding_vector(text: str) -> list[float]:
    """A unit vector of ``EMBEDDING_DIMENSIONS`` floats derived from the SHA-256 of ``text``."""
    words = struct.unpack(f"<{EMBEDDING_DIMENSIONS}I", hashlib.sha256(text.encode()).digest())
    raw = [word / 2**31 - 1 for word in words]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def error_response(
    status: int,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with ``retry-after`` and
    ``retry-after-ms`` headers when ``retry_after`` (seconds) is given."""
    kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    default = "Incorrect API key provided." if status == 401 else HTTPStatus(status).phrase
    error = {"message": message or default, "type": kind, "param": None, "code": code}
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["retry-after"] = str(math.ceil(retry_after))
        all_headers["retry-after-ms"] = str(math.ceil(retry_after * 1000))
    return web.json_response({"error": error}, status=status, headers=all_headers)


_LIMIT_UNITS = {"requests": "RPM", "tokens": "TPM", "input-tokens": "ITPM", "output-tokens": "OTPM"}


def rate_limit_response(rejection: Rejection, headers: Mapping[str, str], model: Any = "") -> web.Response:
    """The 429 for a call the rate limits refused, worded like OpenAI's; a request ``too_large`` for the
    limit is answered as OpenAI answers it for ``model``, without ``retry-after`` (no wait helps)."""
    unit = _LIMIT_UNITS[rejection.kind]
    what = rejection.kind.replace("-", " ")
    if rejection.too_large:
        message = (
            f"Request too large for {model} in organization org-simulated on {what} per min ({unit}): "
            f"Limit {rejection.limit_per_minute:.10g}, Requested {rejection.requested}. The input or "
            "output tokens must be reduced in order to run successfully. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
        error = {"message": message, "type": what, "param": None, "code": "rate_limit_exceeded"}
        return web.json_response({"error": error}, status=429, headers=dict(headers))
    message = (
        f"Rate limit reached for {what} per min ({unit}): Limit {rejection.limit_per_minute:.10g}, "
        f"Requested {rejection.requested}. Please try again in {format_duration(rejection.wait_seconds)}."
    )
    return error_response(429, message, retry_after=rejection.wait_seconds, headers=headers)


def _require_model(body: Mapping[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValueError("you must provide a 'model' parameter")


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(token, int) for token in value)


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def models_body() -> dict[str, Any]:
    """The ``GET /v1/models`` list."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "llmqueue"} for name in MODELS]
    return {"object": "list", "data": data}


def broken_response(shape: BrokenShape, body: Mapping[str, Any], call_id: int) -> web.Response:
    """HTTP 200 with a malformed body, as a faulty provider or proxy sends: see ``BrokenNext``."""
    headers = {BROKEN_HEADER: shape}
    complete = {
        "id": f"chatcmpl-sim-{call_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "sim-model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "lost"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    if shape == "html":
        page = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
        return web.Response(status=200, text=page, content_type="text/html", headers=headers)
    if shape == "empty":
        return web.Response(status=200, body=b"", content_type="application/json", headers=headers)
    if shape == "truncated":
        text = json.dumps(complete)
        return web.Response(
            status=200, text=text[: len(text) // 2], content_type="application/json", headers=headers
        )
    if shape == "lone_surrogate":
        # Valid JSON whose text UTF-8 cannot hold: "\ud800" escaped, as json.dumps writes it.
        complete["choices"][0]["message"]["content"] = "half a pair: \ud800 end"
        return web.Response(
            status=200, text=json.dumps(complete), content_type="application/json", headers=headers
        )
    if shape == "empty_choices":
        complete["choices"] = []
    elif shape == "no_choices":
        del complete["choices"]
    else:
        del complete["choices"][0]["message"]
    return web.json_response(complete, headers=headers)
