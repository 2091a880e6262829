"""A batch's budget held at admission: each call reserves its estimated price (``max_cost``) and
tokens (``max_tokens``) before it is sent and gives the reservation back once it has ended (what it
really cost and used is then in the batch's ``cost`` and ``tokens``).

A call may start while the batch's cost plus what the calls in flight reserved stays within
``max_cost``; a lone call always may while the cost is below it. So the budget holds whatever the
rate: it is passed by at most what the calls in flight cost above their estimates, or by the one last
call. The estimate is the prompt's tokens and the job's ``max_tokens`` (or the default completion) at
the model's price from LiteLLM's cost map. Tokens are held the same way against ``max_tokens``.
"""

from __future__ import annotations

from typing import Literal

import litellm
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.limits.tokens import TokenEstimate

__all__ = ["BudgetGate", "Reservation", "call_price", "unpriced_under_budget"]

Reservation = Literal["ok", "wait", "spent"]

RESERVED = "reserved_cost"
"""The batch hash's field of what the calls in flight reserved, in USD."""
RESERVED_TOKENS = "reserved_tokens"
"""The batch hash's field of the tokens the calls in flight reserved."""

NOTHING = 1e-12
"""USD below which a reservation total is nothing (what float sums leave of reservations given back)."""

WAIT_FOR_CALLS = 0.5
"""Seconds a job waits for the calls in flight to settle when their reservations fill the budget."""


def call_price(model: str, estimate: TokenEstimate) -> float | None:
    """USD a call of ``estimate`` tokens costs at ``model``'s price; None when LiteLLM knows no price."""
    try:
        prompt, completion = litellm.cost_per_token(
            model=model, prompt_tokens=estimate.prompt, completion_tokens=estimate.completion
        )
    except Exception:  # LiteLLM raises for a model it has no price for
        return None
    return float(prompt + completion)


def unpriced_under_budget(batch_id: str, priced_as: str) -> str:
    """Why a job of a batch with ``max_cost`` does not run on a worker that knows no price for it."""
    return (
        f"batch {batch_id} has a cost budget (max_cost) and this worker's LiteLLM knows no price for "
        f"{priced_as!r}, so its calls cannot be counted: give the workers input_cost_per_token and "
        "output_cost_per_token (USD) in [llm] (or the deployment's model_info); no call was made"
    )


def within(*, cost: float, reserved_before: float, price: float, max_cost: float) -> Reservation:
    """The rule: ``spent`` once the cost reached ``max_cost``; ``wait`` while the calls in flight
    reserved so much that this one would pass it; else ``ok``."""
    if cost >= max_cost:
        return "spent"
    if reserved_before > NOTHING and cost + reserved_before + price > max_cost:
        return "wait"
    return "ok"


class BudgetGate:
    """Reserves and gives back calls' estimated prices and tokens in their batches' hashes."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def reserve(
        self, batch_id: str, price: float, *, paid: float = 0.0, held: float = 0.0
    ) -> Reservation:
        """Reserve ``price`` USD of the batch's budget for a call; nothing stays reserved unless ``ok``.
        A re-ask's job has ``paid`` for its answers so far (not yet in the batch's cost) and ``held``
        reservations of its own, which are no other call in flight."""
        return await self._reserve(batch_id, price, (RESERVED, "cost", "max_cost"), paid=paid, held=held)

    async def give_back(self, batch_id: str, price: float) -> None:
        """Give back a reservation of ``price`` USD (the call ended, or was never sent)."""
        await self._redis.hincrbyfloat(keys.batch(batch_id), RESERVED, -price)

    async def reserve_tokens(
        self, batch_id: str, tokens: int, *, paid: int = 0, held: int = 0
    ) -> Reservation:
        """Reserve ``tokens`` of the batch's ``max_tokens`` for a call, by the same rule as a price;
        nothing stays reserved unless ``ok``. A re-ask's job has ``paid`` tokens for its answers so far
        (not yet in the batch's ``tokens``) and ``held`` reservations of its own."""
        fields = (RESERVED_TOKENS, "tokens", "max_tokens")
        return await self._reserve(batch_id, tokens, fields, paid=paid, held=held)

    async def give_back_tokens(self, batch_id: str, tokens: int) -> None:
        """Give back a reservation of ``tokens`` (the call ended, or was never sent)."""
        await self._redis.hincrbyfloat(keys.batch(batch_id), RESERVED_TOKENS, -tokens)

    async def _reserve(
        self, batch_id: str, amount: float, fields: tuple[str, str, str], *, paid: float, held: float
    ) -> Reservation:
        """Reserve ``amount`` in the batch's field ``reserved`` against its ``used`` and ``cap`` fields
        (``fields``, in that order), by :func:`within`; given back unless ``ok``."""
        reserved_field, used_field, cap_field = fields
        batch = keys.batch(batch_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrbyfloat(batch, reserved_field, amount)
            pipe.hmget(batch, [used_field, cap_field])
            reserved, (used, cap) = await pipe.execute()
        answer: Reservation = "ok"
        if cap is not None:
            answer = within(
                cost=float(used or 0) + paid,
                reserved_before=max(0.0, float(reserved) - amount - held),
                price=amount,
                max_cost=float(cap),
            )
        if answer != "ok":
            await self._redis.hincrbyfloat(batch, reserved_field, -amount)
        return answer
