"""The provider's answer as it sent it: its request id, its error body, and its response body without
what LiteLLM adds.

- Request id: ``x-request-id`` (OpenAI and most compatible endpoints) or ``request-id`` (Anthropic),
  read from the response headers LiteLLM keeps (``_response_headers``, ``_hidden_params``) or from an
  error's HTTP response.
- Error body: an HTTP error's body exactly as the provider sent it (the ``httpx.Response`` under
  LiteLLM's exception), parsed as JSON when it is JSON, with the worker's credentials masked.
- Response body: LiteLLM does not keep the body of a successful answer, only its own model of it, which
  adds fields the provider did not send. :func:`without_litellm_additions` takes out exactly those:
  ``provider_specific_fields`` (choices and messages), ``tool_calls``/``function_call``/``audio``/
  ``reasoning_content``/``thinking_blocks`` when null, ``completion_tokens_details``/
  ``prompt_tokens_details`` when null, and an embedding's ``completion_tokens`` (OpenAI's embeddings
  usage has none). What LiteLLM drops cannot be restored: a null ``refusal`` or ``logprobs`` the provider
  sent is absent.

Pure functions over LiteLLM's objects; no LiteLLM import.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from llmqueue.redaction import redact

REQUEST_ID_HEADERS = ("x-request-id", "request-id")
_NULL_MESSAGE_FIELDS = ("tool_calls", "function_call", "audio", "reasoning_content", "thinking_blocks")
_NULL_USAGE_FIELDS = ("completion_tokens_details", "prompt_tokens_details")


def request_id_of_response(response: Any) -> str | None:
    """The provider's request id of a LiteLLM response, when its answer carried one."""
    headers = getattr(response, "_response_headers", None)
    found = _request_id(headers) if isinstance(headers, Mapping) else None
    if found is not None:
        return found
    hidden = getattr(response, "_hidden_params", None)
    extra = hidden.get("additional_headers") if isinstance(hidden, dict) else None
    if isinstance(extra, Mapping):
        return _request_id({k.removeprefix("llm_provider-"): v for k, v in extra.items()})
    return None


def request_id_of_error(exc: BaseException) -> str | None:
    """The provider's request id of an HTTP error LiteLLM raised, when the answer carried one."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if not headers:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    return _request_id({str(k).lower(): str(v) for k, v in dict(headers).items()})


def error_body(exc: BaseException, status_code: int, secrets: Iterable[str] = ()) -> Any:
    """The body of the provider's HTTP error answer ``status_code`` as it sent it (JSON parsed, text
    otherwise), credentials masked; None when LiteLLM kept no such answer."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != status_code:
        return None  # LiteLLM builds a stand-in response for failures that had none
    try:
        text = response.text  # type: ignore[union-attr]
    except Exception:  # a streamed body never read
        return None
    if not isinstance(text, str) or not text:
        return None
    text = redact(text, secrets)
    try:
        return json.loads(text)
    except ValueError:
        return text


def without_litellm_additions(body: Mapping[str, Any]) -> dict[str, Any]:
    """A response body (LiteLLM's ``model_dump()``) without the fields LiteLLM adds (module docstring)."""
    cleaned = dict(body)
    if isinstance(cleaned.get("choices"), list):
        cleaned["choices"] = [_choice(c) if isinstance(c, dict) else c for c in cleaned["choices"]]
    usage = cleaned.get("usage")
    if isinstance(usage, dict):
        usage = {k: v for k, v in usage.items() if not (k in _NULL_USAGE_FIELDS and v is None)}
        if cleaned.get("object") == "list" and usage.get("completion_tokens") == 0:
            del usage["completion_tokens"]  # embeddings: LiteLLM's Usage always has one
        cleaned["usage"] = usage
    return cleaned


def _choice(choice: dict[str, Any]) -> dict[str, Any]:
    choice = {k: v for k, v in choice.items() if k != "provider_specific_fields"}
    message = choice.get("message")
    if isinstance(message, dict):
        choice["message"] = {
            k: v
            for k, v in message.items()
            if k != "provider_specific_fields" and not (k in _NULL_MESSAGE_FIELDS and v is None)
        }
    return choice


def _request_id(headers: Mapping[str, Any]) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None
