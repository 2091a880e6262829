"""The budget rule at admission: (cost, reserved by calls in flight, price, max_cost) → ok / wait / spent."""

from __future__ import annotations

import pytest

from llmqueue.limits.tokens import TokenEstimate
from llmqueue.queue.budget import call_price, within


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
