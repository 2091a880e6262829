"""Spending records for tests of what reads them: a call paid through the gate, a job held."""

from __future__ import annotations

from llmqueue.queue.spending import SpendGate, SpendReservation


async def nothing_to_wake(jobs: object) -> None:
    raise AssertionError(f"nothing is held, yet {jobs} were woken")


async def pay(spend: SpendGate, model: str, cost: float, *, job_id: str = "paid") -> None:
    """One call to ``model`` reserved and settled at ``cost`` USD."""
    reservation = await spend.reserve(job_id, None, model, 0.1)
    assert isinstance(reservation, SpendReservation), reservation
    await spend.settle(reservation, cost)


async def pay_then_hold(spend: SpendGate, model: str, cost: float, *, batch_id: str | None) -> None:
    """The gate's limits published, a call of ``cost`` USD paid, then a job of ``batch_id`` held."""
    await spend.publish(nothing_to_wake)
    await pay(spend, model, cost)
    held = await spend.reserve("held", batch_id, model, 0.1)
    assert held[0] == "held", held
