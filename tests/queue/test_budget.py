"""The budget rule at admission: (cost, reserved by calls in flight, price, max_cost) → ok / wait / spent."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.limits.tokens import TokenEstimate
from llmqueue.queue.budget import BudgetGate, call_price, within


@pytest.mark.parametrize(
    ("cost", "reserved_before", "price", "answer"),
    [
        (0.0, 0.0, 0.1, "ok"),  # room for it
        (0.5, 0.3, 0.1, "ok"),  # exactly fills the budget
        (0.5, 0.3, 0.3, "wait"),  # the calls in flight may leave room once they settle
        (0.9, 0.0, 0.5, "ok"),  # a lone call may start while the cost is below the budget
        (1.0, 0.0, 0.1, "spent"),
        (1.2, 0.5, 0.1, "spent"),
    ],
)
def test_a_call_starts_while_cost_and_reservations_stay_within_the_budget(
    cost: float, reserved_before: float, price: float, answer: str
) -> None:
    assert within(cost=cost, reserved_before=reserved_before, price=price, max_cost=1.0) == answer


def test_a_call_is_priced_at_its_prompt_and_max_tokens_or_none_without_a_known_price() -> None:
    price = call_price("gpt-4o-mini", TokenEstimate(1000, 100))

    assert price == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)
    assert call_price("openai/my-finetune-xyz", TokenEstimate(1000, 100)) is None


async def test_token_reservations_hold_calls_in_flight_and_count_a_reasks_own_apart(redis: Redis) -> None:
    gate = BudgetGate(redis)
    await redis.hset(keys.batch("b"), mapping={"tokens": 100, "max_tokens": 1000})

    assert await gate.reserve_tokens("b", 400) == "ok"  # 100 used + 400 in flight
    assert await gate.reserve_tokens("b", 400) == "ok"  # fills it to 900
    assert await gate.reserve_tokens("b", 200) == "wait"  # the calls in flight may leave room
    assert int(await redis.hget(keys.batch("b"), "reserved_tokens") or 0) == 800  # a refusal holds nothing
    # A re-ask of the first call: its own 400 held are no other call's; its answer used 300 so far.
    assert await gate.reserve_tokens("b", 400, paid=300, held=400) == "wait"  # 100 + 300 + 400 + 400
    assert await gate.reserve_tokens("b", 100, paid=100, held=400) == "ok"  # 100 + 100 + 400 + 100
    for tokens in (400, 400, 100):
        await gate.give_back_tokens("b", tokens)
    assert int(await redis.hget(keys.batch("b"), "reserved_tokens") or 0) == 0
    await redis.hset(keys.batch("b"), "tokens", 1000)
    assert await gate.reserve_tokens("b", 10) == "spent"
