"""What ``llmqueue limits``, ``llmqueue status`` and the dashboard show of the limit scopes: which were
used (by a batch), and each one's state as the limiter's script reports it (``RateLimiter.inspect``).
Admission never reads any of it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from redis.asyncio import Redis

from llmqueue import keys

LimitState = Literal["limited", "probing", "unlimited"]
#: Seconds a configured limit is shown after a worker last acquired with it: it belongs to the run that
#: set it.
CONFIGURED_SHOWN_FOR = 60.0
#: Seconds the record of which scopes a batch ran in is kept after its last job started.
BATCH_SCOPES_TTL = 7 * 86400
#: Per dimension of the limiter (``r``, ``t``, ``i``, ``o``): its rate's name and its level's.
_DIMENSIONS = (
    ("r", "rpm", "request"),
    ("t", "tpm", "token"),
    ("i", "itpm", "input"),
    ("o", "otpm", "output"),
)


@dataclass(frozen=True)
class ScopeState:
    """A scope as the workers see it now (``llmqueue limits``); rates per minute, 0 for none."""

    scope: str
    state: LimitState
    rpm: float
    tpm: float
    configured_rpm: float
    configured_tpm: float
    learnt_rpm: float
    learnt_tpm: float
    request_level: float
    request_capacity: float
    token_level: float
    token_capacity: float
    cooldown: float
    others_request_share: float
    """The share of the request rate the provider's headers showed another client taking (the last
    ten seconds or so)."""
    requests_last_minute: int
    rate_limited_last_minute: int
    itpm: float
    """Input tokens per minute (Anthropic's ITPM), 0 for none; the same for output below."""
    otpm: float
    configured_itpm: float
    configured_otpm: float
    learnt_itpm: float
    learnt_otpm: float
    input_level: float
    input_capacity: float
    output_level: float
    output_capacity: float
    paused: bool = False
    """Paused (``llmqueue pause --scope``): no call to it starts until it is resumed."""

    @property
    def source(self) -> str:
        """``configured``, ``learnt``, ``both`` or ``none``: where the scope's limits come from now."""
        configured = max(self.configured_rpm, self.configured_tpm, self.configured_itpm, self.configured_otpm)
        learnt = max(self.learnt_rpm, self.learnt_tpm, self.learnt_itpm, self.learnt_otpm)
        return {(True, True): "both", (True, False): "configured", (False, True): "learnt"}.get(
            (configured > 0, learnt > 0), "none"
        )

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"source": self.source}

    @classmethod
    def from_script(cls, scope: str, reply: dict[str, Any]) -> ScopeState:
        """From the reply of the limiter script's ``inspect``."""
        values: dict[str, Any] = {
            "requests_last_minute": int(reply["n"]),
            "rate_limited_last_minute": int(reply["e"]),
        }
        for d, rate, kind in _DIMENSIONS:
            names = (rate, f"configured_{rate}", f"learnt_{rate}", f"{kind}_level", f"{kind}_capacity")
            values.update(zip(names, map(float, reply[d]), strict=True))
        rpm, others = values["rpm"], float(reply["others"])
        share = min(1.0, others / rpm) if rpm else 0.0
        return cls(
            scope, reply["state"], cooldown=float(reply["cooldown"]), others_request_share=share, **values
        )


async def scopes(redis: Redis) -> list[str]:
    """Every scope a worker has acquired from (while its buckets are kept), sorted."""
    return _sorted(await redis.smembers(keys.limit_scopes()))


async def note_batch_scope(redis: Redis, batch_id: str, scope: str) -> None:
    """Record that jobs of ``batch_id`` run in ``scope`` (kept as long as a queued job)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.sadd(keys.batch_scopes(batch_id), scope)
        pipe.expire(keys.batch_scopes(batch_id), BATCH_SCOPES_TTL)
        await pipe.execute()


async def batch_scopes(redis: Redis, batch_id: str) -> list[str]:
    """The scopes jobs of ``batch_id`` ran in, sorted."""
    return _sorted(await redis.smembers(keys.batch_scopes(batch_id)))


def _sorted(members: set[Any]) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
