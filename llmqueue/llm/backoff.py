"""The retry delay schedule: a pure function of the attempt number and the policy."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from llmqueue.settings import LLMConfig


@dataclass(frozen=True)
class RetryPolicy:
    """OpenHands' retry settings: ``num_retries`` retries after the first attempt.

    The delay before retry ``n`` (1-based) is ``multiplier * 2**(n-1)`` seconds clamped to
    ``[min_wait, max_wait]``; a provider's retry-after raises it, still within the bounds.
    """

    num_retries: int = 4
    min_wait: float = 5.0
    max_wait: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.0

    @classmethod
    def from_llm(cls, llm: LLMConfig) -> RetryPolicy:
        return cls(
            num_retries=llm.num_retries,
            min_wait=llm.retry_min_wait,
            max_wait=llm.retry_max_wait,
            multiplier=llm.retry_multiplier,
            jitter=llm.retry_jitter,
        )

    @property
    def max_attempts(self) -> int:
        return self.num_retries + 1

    def allows_retry(self, failed_attempts: int) -> bool:
        """Whether another attempt may follow ``failed_attempts`` failures."""
        return failed_attempts <= self.num_retries

    def delay(
        self,
        retry_number: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        if retry_number < 1:
            raise ValueError("retry_number starts at 1")
        delay: float = self.multiplier * 2.0 ** (retry_number - 1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if self.jitter:
            delay *= 1 + self.jitter * rand()
        return min(max(delay, self.min_wait), self.max_wait)
