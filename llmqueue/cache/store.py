"""What a response store offers, whichever place it keeps the answers in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class CacheStats:
    """A store's contents: ``entries`` answers in ``bytes`` bytes, reused ``hits`` times in all."""

    backend: str
    location: str
    entries: int
    bytes: int
    hits: int
    max_bytes: int
    ttl: float | None


class CacheStore(Protocol):
    """Keeps provider responses (JSON objects) by cache key; safe to share between worker processes."""

    async def get(self, key: str) -> dict[str, Any] | None:
        """The response stored under ``key``, or None (never stored, expired or evicted)."""

    async def has(self, key: str) -> bool:
        """Whether ``get(key)`` would answer now; counts no hit and refreshes nothing (for estimates)."""

    async def put(self, key: str, response: dict[str, Any]) -> None:
        """Store ``response`` under ``key``, evicting the least recently used over the size limit."""

    async def stats(self) -> CacheStats: ...

    async def clear(self) -> int:
        """Remove every entry; returns how many there were."""

    async def close(self) -> None: ...
