"""Scripted faults: the commands ``POST /control`` takes (JSON with an ``action``), also callable in
process through :meth:`llmqueue.simulator.server.SimulatedProvider.control`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from llmqueue.simulator.wire import BrokenShape


class FailNext(BaseModel):
    """Answer the next ``count`` chat/embedding calls with ``status`` (and ``retry-after``, if given)."""

    action: Literal["fail_next"] = "fail_next"
    count: int = Field(default=1, ge=0)
    status: int = Field(ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    message: str | None = None


class RateLimitFor(BaseModel):
    """Answer 429 to every chat/embedding call for ``seconds`` (with ``retry-after``, if given)."""

    action: Literal["rate_limit_for"] = "rate_limit_for"
    seconds: float = Field(ge=0)
    retry_after: float | None = Field(default=None, ge=0)


class ShareKey(BaseModel):
    """From now on another client on the key takes ``share`` of both limits (0 stops it)."""

    action: Literal["share_key"] = "share_key"
    share: float = Field(ge=0, lt=1)


class BrokenNext(BaseModel):
    """Answer the next ``count`` chat/embedding calls with HTTP 200 and a malformed body of ``shape``.

    Shapes (see ``llmqueue.simulator.wire.broken_body``): ``empty_choices`` (``choices: []``),
    ``no_choices`` (the key left out), ``no_message`` (a choice without ``message``), ``truncated`` (JSON
    cut off half-way), ``html`` (a proxy's error page), ``empty`` (no body at all), and ``lone_surrogate``: a
    well-formed answer whose text holds ``\\ud800``, valid JSON that UTF-8 cannot encode; ``cut_stream``: a
    streamed call gets half its chunks, then the connection is dropped. These calls skip
    the rate limits and are counted in ``stats.broken``, not ``succeeded``.
    """

    action: Literal["broken_next"] = "broken_next"
    count: int = Field(default=1, ge=0)
    shape: BrokenShape


class Reset(BaseModel):
    """Clear scripted faults, counters and rate-limit buckets."""

    action: Literal["reset"] = "reset"


AnyCommand = FailNext | BrokenNext | RateLimitFor | ShareKey | Reset
ControlCommand = Annotated[AnyCommand, Field(discriminator="action")]
CONTROL: TypeAdapter[AnyCommand] = TypeAdapter(ControlCommand)
