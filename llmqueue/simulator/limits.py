"""What a request costs the simulated provider, and whether its rate limits admit it.

Pure logic, no I/O: every method that depends on time takes ``now`` (seconds on any monotonic clock), so
the limits are tested by moving a number forward instead of sleeping.

Limits are enforced the way hosted providers enforce them: not per minute, but as token buckets over a
short window. A limit of ``rate`` per minute with a window of ``w`` seconds is a bucket of capacity
``rate * w / 60`` that refills continuously at ``rate / 60`` per second and starts full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

#: Which provider's rate-limit headers the simulated provider sends.
HeaderFamily = Literal["openai", "anthropic", "none"]

#: Tokens charged per message on top of its text (role, separators), like OpenAI's chat format.
TOKENS_PER_MESSAGE = 3
#: Tokens charged for each image part, whatever its size (OpenAI's "low detail" price).
TOKENS_PER_IMAGE = 85


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text`` by the cheap rule of thumb: one token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, or a list of parts whose text parts are joined.

    Image and other non-text parts contribute no text.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request: ``ceil(chars / 4)`` of all message text, plus
    ``TOKENS_PER_MESSAGE`` per message and ``TOKENS_PER_IMAGE`` per image part. Deterministic, not exact.
    """
    chars = sum(len(message_text(message.get("content"))) for message in messages)
    images = sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, Mapping) and part.get("type") == "image_url"
    )
    return math.ceil(chars / 4) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_IMAGE * images


def format_duration(seconds: float) -> str:
    """A duration the way ``x-ratelimit-reset-*`` headers carry it: ``"1.2s"``, ``"0.05s"``, ``"0s"``."""
    text = f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


class TokenBucket:
    """A bucket of ``rate_per_minute * window_seconds / 60`` units that refills at ``rate_per_minute / 60``
    units per second, full at ``now``.

    ``take(amount, now)`` succeeds when the bucket holds ``amount``. An amount larger than the whole bucket
    is taken only when the bucket is full and leaves it in debt (a negative level), so such a request is
    not refused forever and the long-run rate still holds.

    ``share(fraction, now)`` plays another client on the same key that takes ``fraction`` of the refill
    from then on: the bucket refills at ``(1 - fraction)`` of the rate for everyone else.
    """

    def __init__(self, rate_per_minute: float, window_seconds: float, now: float) -> None:
        if rate_per_minute <= 0 or window_seconds <= 0:
            raise ValueError("rate_per_minute and window_seconds must be positive")
        self.rate_per_minute = rate_per_minute
        self.capacity = rate_per_minute * window_seconds / 60
        self._per_second = rate_per_minute / 60
        self._level = self.capacity
        self._updated_at = now
        self._others = 0.0

    def level(self, now: float) -> float:
        """Units in the bucket at ``now`` (negative while in debt)."""
        elapsed = max(now - self._updated_at, 0.0)
        return min(self.capacity, self._level + elapsed * self._per_second * (1 - self._others))

    def share(self, fraction: float, now: float) -> None:
        """From ``now`` on, another client takes ``fraction`` (0 to 1) of the refill."""
        self._level = self.level(now)
        self._updated_at = max(now, self._updated_at)
        self._others = fraction

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` could be taken; 0.0 when it can be taken now."""
        needed = min(amount, self.capacity)
        return max(needed - self.level(now), 0.0) / (self._per_second * max(1 - self._others, 1e-9))

    def take(self, amount: float, now: float) -> None:
        """Remove ``amount`` at ``now``; call only when ``wait_for(amount, now)`` is 0.0."""
        self._level = self.level(now) - amount
        self._updated_at = max(now, self._updated_at)

    def reset_in(self, now: float) -> float:
        """Seconds from ``now`` until the bucket is full again."""
        return (self.capacity - self.level(now)) / (self._per_second * max(1 - self._others, 1e-9))


LimitKind = Literal["requests", "tokens", "input-tokens", "output-tokens"]


@dataclass(frozen=True)
class Rejection:
    """Why a request was refused: which limit (:data:`LimitKind`), the limit per minute, what the request
    asked for, and the seconds until it would be admitted (``math.inf`` when it is ``too_large``: it
    asks for more than the limit allows in a whole minute, so no wait admits it)."""

    kind: LimitKind
    limit_per_minute: float
    requested: int
    wait_seconds: float
    too_large: bool = False


class RateLimits:
    """The provider's limits, each ``None`` for unlimited: requests, tokens, and (as Anthropic has them)
    input tokens and output tokens per minute.

    ``admit`` takes what a request costs from every bucket, or nothing at all and returns the
    ``Rejection`` that names the limit that was short (in the order above, when several are). The output
    bucket must hold the request's output reserve (its ``max_tokens``) and is charged what the answer
    produced, as Anthropic's output limit counts.
    """

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        window_seconds: float,
        now: float,
        *,
        itpm: float | None = None,
        otpm: float | None = None,
    ) -> None:
        self.requests = TokenBucket(rpm, window_seconds, now) if rpm is not None else None
        self.tokens = TokenBucket(tpm, window_seconds, now) if tpm is not None else None
        self.input_tokens = TokenBucket(itpm, window_seconds, now) if itpm is not None else None
        self.output_tokens = TokenBucket(otpm, window_seconds, now) if otpm is not None else None

    def _buckets(self) -> list[tuple[LimitKind, TokenBucket | None]]:
        return [
            ("requests", self.requests),
            ("tokens", self.tokens),
            ("input-tokens", self.input_tokens),
            ("output-tokens", self.output_tokens),
        ]

    def share(self, fraction: float, now: float) -> None:
        """Another client on the same key takes ``fraction`` of every limit from ``now`` on."""
        for _, bucket in self._buckets():
            if bucket is not None:
                bucket.share(fraction, now)

    def too_large(self, tokens: int) -> Rejection | None:
        """The refusal of a request of ``tokens`` above the tokens-per-minute limit itself (OpenAI answers
        it "Request too large", whatever the buckets hold); None when it fits in the limit."""
        if self.tokens is None or tokens <= self.tokens.rate_per_minute:
            return None
        return Rejection("tokens", self.tokens.rate_per_minute, tokens, math.inf, too_large=True)

    def admit(
        self,
        tokens: int,
        now: float,
        *,
        input_tokens: int = 0,
        output_reserve: int = 0,
        output_tokens: int = 0,
    ) -> Rejection | None:
        """Admit a request costing ``tokens`` (its ``input_tokens``, and ``output_tokens`` produced of an
        ``output_reserve`` asked for) at ``now``, or say why not (and consume nothing)."""
        asks = {"requests": 1, "tokens": tokens, "input-tokens": input_tokens}
        takes = {**asks, "output-tokens": output_tokens}
        asks["output-tokens"] = output_reserve
        waits = {kind: bucket.wait_for(asks[kind], now) for kind, bucket in self._buckets() if bucket}
        wait = max(waits.values(), default=0.0)
        for kind, bucket in self._buckets():
            if bucket is not None and waits[kind] > 0:
                return Rejection(kind, bucket.rate_per_minute, asks[kind], wait)
        for kind, bucket in self._buckets():
            if bucket is not None:
                bucket.take(takes[kind], now)
        return None

    def headers(self, now: float, family: HeaderFamily = "openai", wall_clock: float = 0.0) -> dict[str, str]:
        """The rate-limit headers of ``family`` for the limits set; ``limit`` is per minute, ``remaining``
        what the current window's bucket holds.

        ``openai``: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, reset as a duration (OpenAI
        has no input/output limits to state). ``anthropic``:
        ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``, reset
        as an RFC 3339 time (``wall_clock`` is the Unix time at ``now``); with input and output limits
        and no combined one, ``tokens`` states the one with the fewest tokens remaining, as Anthropic
        does.
        ``none``: no headers.
        """
        headers: dict[str, str] = {}
        if family == "none":
            return headers
        stated = self._buckets()
        if family == "openai":
            stated = stated[:2]
        elif self.tokens is None:
            split = [bucket for _, bucket in stated[2:] if bucket is not None]
            if split:
                tightest = min(split, key=lambda bucket: bucket.level(now))
                stated = [stated[0], ("tokens", tightest), *stated[2:]]
        for kind, bucket in stated:
            if bucket is None:
                continue
            limit = f"{bucket.rate_per_minute:.10g}"
            remaining = str(max(math.floor(bucket.level(now)), 0))
            if family == "openai":
                headers[f"x-ratelimit-limit-{kind}"] = limit
                headers[f"x-ratelimit-remaining-{kind}"] = remaining
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_in(now))
            else:
                reset = datetime.fromtimestamp(wall_clock + bucket.reset_in(now), UTC)
                headers[f"anthropic-ratelimit-{kind}-limit"] = limit
                headers[f"anthropic-ratelimit-{kind}-remaining"] = remaining
                headers[f"anthropic-ratelimit-{kind}-reset"] = reset.isoformat(timespec="milliseconds")
        return headers
