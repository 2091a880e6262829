"""What counts as an answer: a provider's 2xx response is checked before a job is called ``succeeded``.

A 2xx whose body LiteLLM could read may still hold no answer (``choices: []``, an embedding list with
no vectors); such a call ends as ``invalid_response`` rather than as a success with nothing in it.
Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any


def missing_answer(kind: str, response: Any) -> str | None:
    """Why ``response`` (LiteLLM's object or a dict) holds no answer for a ``kind`` job; None if it does."""
    data = response.model_dump() if hasattr(response, "model_dump") else response
    if not isinstance(data, dict):
        return f"the provider answered with {type(response).__name__}, not a response object"
    if kind == "embedding":
        vectors = data.get("data")
        if not isinstance(vectors, list) or not vectors:
            return "the provider's embedding response has no data"
        if any(not isinstance(item, dict) or item.get("embedding") is None for item in vectors):
            return "an item of the provider's embedding response has no embedding"
        return None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "the provider's response has no choices"
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        return "the provider's first choice has no message"
    return None
