"""How the simulated provider behaves (:class:`ProviderConfig`): its limits, latency, faults and headers."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmqueue.simulator.limits import HeaderFamily


class ProviderConfig(BaseModel):
    """How the simulated provider behaves; negative values are rejected.

    - ``rpm``, ``tpm``: requests and tokens per minute, ``None`` for unlimited; enforced as buckets of
      ``rate * window_seconds / 60`` that start full (see ``llmqueue.simulator.limits``). ``itpm``,
      ``otpm``: input and output tokens per minute, as Anthropic limits them: a call needs its prompt
      in the input bucket and its ``max_tokens`` in the output bucket, which is charged what the answer
      produced; Anthropic's ``tokens`` headers state whichever of the two has fewer tokens left.
    - ``latency``: mean seconds before an admitted call is answered, uniform in
      ``latency * (1 ± latency_jitter)``.
    - ``error_rate``: fraction of admitted calls answered 500, 502 or 503; ``timeout_rate``: fraction that
      hang ``hang_seconds`` before answering. Both drawn from ``random.Random(seed)``.
    - ``api_key``: when set, calls must send ``Authorization: Bearer <api_key>`` or get 401.
    - ``completion_tokens``: completion length of every chat answer, capped by the request's ``max_tokens``.
    - ``stream_chunk_delay``: seconds between the chunks of a streamed answer (``stream: true``: server-sent
      events in OpenAI's ``chat.completion.chunk`` shape, one word a chunk).
    - ``batch_validating_seconds``, ``batch_in_progress_seconds``: how long a Batch API batch spends in
      each state before it completes (``llmqueue.simulator.batch_api``).
      A chat call is charged its prompt's characters/4 plus ``max_tokens`` when it sets one (as OpenAI's
      limiter counts), else plus its completion.
    - ``rate_limit_headers``: the rate-limit headers every answer carries, OpenAI's (``x-ratelimit-*``),
      Anthropic's (``anthropic-ratelimit-*``) or none.
    - ``other_client_share``: the key is also used by another client, which takes this fraction of both
      limits (the headers still state the whole key's limits, and what is left of them).
    - ``limits_per_model``: each model the calls name has limits of its own, as OpenAI's keys have (a chat
      model and an embedding model do not share buckets); by default all models share one set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    itpm: float | None = Field(default=None, gt=0)
    otpm: float | None = Field(default=None, gt=0)
    window_seconds: float = Field(default=1.0, gt=0)
    latency: float = Field(default=0.0, ge=0)
    latency_jitter: float = Field(default=0.0, ge=0, le=1)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    hang_seconds: float = Field(default=30.0, ge=0)
    api_key: str | None = Field(default=None, repr=False)
    seed: int | None = None
    completion_tokens: int = Field(default=16, ge=0)
    stream_chunk_delay: float = Field(default=0.02, ge=0)
    batch_validating_seconds: float = Field(default=0.1, ge=0)
    batch_in_progress_seconds: float = Field(default=0.3, ge=0)
    rate_limit_headers: HeaderFamily = "openai"
    other_client_share: float = Field(default=0.0, ge=0, lt=1)
    limits_per_model: bool = False

    @model_validator(mode="after")
    def _fractions_fit(self) -> Self:
        if self.error_rate + self.timeout_rate > 1:
            raise ValueError("error_rate + timeout_rate must not exceed 1")
        return self
