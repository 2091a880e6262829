"""What a worker keeps of a provider's answer: its body as a dict, its token usage, and its cost."""

from __future__ import annotations

from typing import Any

import litellm

from llmqueue.models import Usage


def response_dict(response: Any) -> dict[str, Any]:
    """The answer as a plain dict (LiteLLM's response objects are pydantic models)."""
    if hasattr(response, "model_dump"):
        return response.model_dump()  # type: ignore[no-any-return]
    return dict(response)


def response_usage(response: Any) -> Usage | None:
    """The tokens the provider reports the call used; None when it reports none."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    data = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    return Usage(
        prompt_tokens=data.get("prompt_tokens") or 0,
        completion_tokens=data.get("completion_tokens") or 0,
        total_tokens=data.get("total_tokens") or 0,
    )


def response_cost(response: Any) -> float | None:
    """LiteLLM's cost for the call, in US dollars; None for models without a known price."""
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        cost = hidden["response_cost"]  # LiteLLM priced the call already (None: it knows no price)
    else:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:
            return None
    return float(cost) if cost else None
