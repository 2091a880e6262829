"""The page's figures from llmqueue's records: rates, projected cost, failures by reason, spend."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llmqueue.dashboard.views import Sample, failure_groups, per_minute, projected_cost, spend_view
from llmqueue.models import AttemptError, JobResult, Timings
from llmqueue.queue.ledger import BatchStatus


def status(**fields: Any) -> BatchStatus:
    base: dict[str, Any] = dict(
        batch_id="b",
        total=100,
        queued=0,
        running=0,
        retry_waiting=0,
        succeeded=0,
        failed=0,
        cancelled=0,
        cached=0,
        requests=0,
        rate_limited=0,
        prompt_tokens=0,
        completion_tokens=0,
        tokens=0,
        cost=0.0,
        max_cost=None,
        max_tokens=None,
        cancel_requested=False,
        created_at=0.0,
        elapsed=60.0,
        throughput=0.0,
        eta_seconds=None,
        source=None,
    )
    return BatchStatus(**{**base, **fields})


def test_per_minute_measures_over_the_last_window_only() -> None:
    samples = [Sample(0, 0, 0, 0, 0), Sample(100, 500, 5000, 0, 0), Sample(130, 560, 5600, 0, 0)]
    assert per_minute(samples, window=60) == (120.0, 1200.0)  # (560-500)/30 s, not the first 100 s


def test_per_minute_waits_for_two_seconds_of_samples() -> None:
    assert per_minute([Sample(0, 0, 0, 0, 0)]) is None
    assert per_minute([Sample(0, 0, 0, 0, 0), Sample(1, 5, 50, 0, 0)]) is None


def test_projected_cost_prices_the_remaining_jobs_like_the_paid_ones() -> None:
    # 20 finished, 10 of them from the cache (free): 10 paid jobs cost 0.5, 80 remain.
    assert projected_cost(status(succeeded=20, cached=10, cost=0.5)) == 0.5 + 0.05 * 80


def test_projected_cost_is_unknown_before_a_paid_job() -> None:
    assert projected_cost(status(succeeded=3, cached=3)) is None


def result(job_id: str, state: str, *kinds: str) -> JobResult:
    errors = [AttemptError(attempt=i, kind=k, message=f"{k} #{i}") for i, k in enumerate(kinds)]
    return JobResult(
        job_id=job_id,
        status=state,
        attempts=len(kinds),
        errors=errors,
        timings=Timings(queued_at=datetime.now(UTC)),
    )


def test_failure_groups_count_by_last_error_largest_first_with_examples() -> None:
    results = [
        result("a", "failed", "rate_limit", "timeout"),
        result("b", "failed", "auth"),
        result("c", "failed", "timeout"),
        result("d", "cancelled", "cancelled"),
        result("e", "succeeded"),
        result("f", "failed", "timeout"),
    ]
    groups = failure_groups(results, examples=2)
    assert [(g["reason"], g["count"]) for g in groups] == [("timeout", 3), ("auth", 1), ("cancelled", 1)]
    assert [e["job_id"] for e in groups[0]["examples"]] == ["a", "c"]
    assert groups[0]["examples"][0]["message"] == "timeout #1"


def test_spend_counts_batches_in_the_utc_day_and_month_they_were_created() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()
    today = datetime(2026, 12, 6, 1, tzinfo=UTC).timestamp()
    this_month = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    last_month = datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp()
    spend = spend_view(
        [
            status(batch_id="t", created_at=today, cost=1.0),
            status(batch_id="m", created_at=this_month, cost=2.0),
            status(batch_id="old", created_at=last_month, cost=4.0),
        ],
        now,
        NO_SPENDING,
    )
    assert (spend["today"]["total"], spend["today"]["by_batch"]) == (1.0, {"t": 1.0})
    assert (spend["month"]["total"], spend["month"]["by_batch"]) == (3.0, {"t": 1.0, "m": 2.0})
    assert spend["warnings"] == [] and spend["held"] == 0


def row(spent: float, limit: float | None, warning: bool = False) -> dict[str, Any]:
    share = spent / limit if limit else None
    return {
        "spent": spent,
        "in_flight": 0.0,
        "limit": limit,
        "share": share,
        "warning": warning,
        "reached": False,
    }


NO_SPENDING: dict[str, Any] = {
    "limits_set": False,
    "warn_at": 0.8,
    "today": {"period": "2026-12-06", **row(0.0, None), "by_model": {}},
    "month": {"period": "2026-12", **row(0.0, None), "by_model": {}},
    "held": 0,
    "held_reasons": [],
}


def test_spend_by_model_comes_with_a_warning_per_limit_past_its_share() -> None:
    spending = {
        **NO_SPENDING,
        "limits_set": True,
        "today": {"period": "2026-12-06", **row(8.5, 10.0, True), "by_model": {"gpt-4o": row(1.0, 5.0)}},
        "month": {"period": "2026-12", **row(8.5, None), "by_model": {"gpt-4o": row(9.0, 10.0, True)}},
    }

    spend = spend_view([], datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp(), spending)

    assert spend["warnings"] == [
        "all models: 85% of the daily limit ($10)",
        "gpt-4o: 90% of the monthly limit ($10)",
    ]
    assert spend["today"]["by_model"]["gpt-4o"]["limit"] == 5.0
