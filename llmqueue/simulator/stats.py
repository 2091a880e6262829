"""What the simulated provider counts (``GET /stats``): calls, answers by status, tokens, arrivals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LISTS = frozenset({"arrivals", "request_times", "stream_chunk_times", "json_conversations"})
"""The fields of ``ProviderStats`` that hold one entry per call (or chunk)."""


@dataclass(frozen=True)
class Arrival:
    """A successful call: when it was admitted (seconds, provider clock) and the tokens it was charged."""

    time: float
    prompt_tokens: int
    total_tokens: int


@dataclass
class ProviderStats:
    """Counters of chat/embedding calls since start or ``reset()``.

    ``errors`` counts every non-200 answer by status, 429s included; ``broken`` the 200s sent with a
    malformed body (``BrokenNext``), which ``succeeded`` does not count; ``tokens_admitted`` sums the tokens
    charged to admitted calls; ``arrivals`` lists successful calls in completion order, and
    ``request_times`` the arrival time of every call, refused ones included.
    """

    requests: int = 0
    succeeded: int = 0
    rate_limited: int = 0
    broken: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    tokens_admitted: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cache_marked: int = 0
    """Chat calls whose messages carried a prompt-caching mark (``cache_control``)."""
    stream_chunk_times: list[float] = field(default_factory=list)
    """When each chunk carrying content of a streamed answer was written (the provider's clock)."""
    json_conversations: list[list[dict[str, Any]]] = field(default_factory=list)
    """The messages of each chat call that asked for JSON (``response_format``), as received."""

    def to_json(self, *, counts_only: bool = False) -> dict[str, Any]:
        """The counters as JSON-ready data (``errors`` keyed by status as a string); ``counts_only``
        leaves out the lists that grow with every call (``LISTS``: a million calls' took seconds)."""
        if counts_only:
            data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in LISTS}
        else:
            data = asdict(self)
        data["errors"] = {str(status): count for status, count in self.errors.items()}
        return data
