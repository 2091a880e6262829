"""When ``llmqueue run`` starts the workers after its first (``llmqueue.batches.worker_ramp``)."""

from __future__ import annotations

from llmqueue.batches.worker_ramp import OTHER_WORKERS_AFTER, SHORTEST_START, WorkerRamp
from llmqueue.queue.ledger import BatchStatus


def status(
    *, total: int, succeeded: int = 0, requests: int = 0, queued: int = 0, cached: int = 0
) -> BatchStatus:
    return BatchStatus(
        batch_id="b1", total=total, queued=queued, running=0, retry_waiting=0, succeeded=succeeded,
        failed=0, cancelled=0, cached=cached, requests=requests, rate_limited=0, prompt_tokens=0,
        completion_tokens=0, tokens=0, cost=0.0, max_cost=None, max_tokens=None, cancel_requested=False,
        created_at=0.0, elapsed=0.0, throughput=0.0, eta_seconds=None, source=None,
    )  # fmt: skip


def calling_ramp(start_seconds: float = 4.0) -> WorkerRamp:
    """A ramp whose first worker took ``start_seconds`` to come up and started calling at t=100."""
    ramp = WorkerRamp()
    assert not ramp.due(status(total=2000, queued=2000), now=90)  # the run's first look
    ramp.first_up(start_seconds=start_seconds, now=100)
    assert not ramp.due(status(total=2000, requests=1, queued=1900), now=100)  # calling: the rate starts
    return ramp


def test_nothing_starts_before_the_first_worker_is_up() -> None:
    assert not WorkerRamp().due(status(total=1_000_000, requests=5, queued=999_000), now=50)


def test_lines_all_in_the_first_workers_hands_leave_the_others_unstarted() -> None:
    ramp = calling_ramp()
    # Ten slow calls, all taken at once: nothing waits that a second worker could take.
    assert not ramp.due(status(total=10, requests=10), now=130)


def test_lines_left_that_outlast_a_workers_start_start_the_others() -> None:
    # 100 lines/s with 1,000 left: 10 s of work for one worker, more than the 4 s another takes to start.
    assert calling_ramp(4.0).due(status(total=1100, succeeded=100, requests=300, queued=800), now=101)
    # With 300 left (3 s) it would not be worth it.
    assert not calling_ramp(4.0).due(status(total=400, succeeded=100, requests=300, queued=100), now=101)


def test_lines_answered_from_the_cache_are_no_rate_of_the_worker() -> None:
    # A rerun: 8,000 of the 10,000 lines come from the cache at once, 10 by calls in the first second.
    ramp = calling_ramp(4.0)
    assert ramp.due(status(total=10_000, succeeded=8010, cached=8000, requests=200, queued=1800), now=101)


def test_slow_calls_with_none_finished_start_the_others_once_a_start_has_passed() -> None:
    ramp = calling_ramp(start_seconds=4.0)
    assert not ramp.due(status(total=500, requests=200, queued=300), now=103.9)
    assert ramp.due(status(total=500, requests=200, queued=300), now=104.1)


def test_a_worker_that_makes_no_call_gets_the_others_a_while_after_it_came_up() -> None:
    ramp = WorkerRamp()
    ramp.first_up(start_seconds=4, now=10)  # held by a limit, say
    assert not ramp.due(status(total=100, queued=100), now=10 + OTHER_WORKERS_AFTER - 0.1)
    assert ramp.due(status(total=100, queued=100), now=10 + OTHER_WORKERS_AFTER + 0.1)


def test_a_file_not_yet_counted_starts_the_others_once_calling() -> None:
    ramp = WorkerRamp()
    assert not ramp.due(status(total=0), now=1)
    ramp.first_up(start_seconds=4, now=5)
    assert ramp.due(status(total=0, requests=3), now=5)


def test_a_start_is_taken_to_last_a_second_at_least() -> None:
    ramp = calling_ramp(start_seconds=0.2)
    assert ramp.start_seconds == SHORTEST_START
    # 0.5 s of work left at 100 lines/s: under the second a start is taken to need.
    assert not ramp.due(status(total=150, succeeded=100, requests=120, queued=30), now=101)


def test_a_resumed_batchs_earlier_lines_do_not_count_in_the_rate() -> None:
    ramp = WorkerRamp()
    # The run's first look: 900 lines answered by 901 calls of the run before.
    assert not ramp.due(status(total=1000, succeeded=900, requests=901, queued=100), now=95)
    ramp.first_up(start_seconds=4, now=100)
    assert not ramp.due(status(total=1000, succeeded=900, requests=905, queued=95), now=100)  # calling
    # 10 lines in 1 s: the 90 left take 9 s, longer than a start (4 s).
    assert ramp.due(status(total=1000, succeeded=910, requests=930, queued=70), now=101)


def test_a_resumed_batch_whose_worker_has_not_called_yet_waits_as_a_new_one() -> None:
    ramp = WorkerRamp()
    assert not ramp.due(status(total=1000, succeeded=900, requests=901, queued=100), now=95)
    ramp.first_up(start_seconds=1, now=100)
    # The run before's calls are not this worker's: it has made none, so the others wait the while a
    # worker that makes no call is given, not a start's length.
    assert not ramp.due(status(total=1000, succeeded=900, requests=901, queued=100), now=100.5)
    assert not ramp.due(status(total=1000, succeeded=900, requests=901, queued=100), now=102.5)
    assert ramp.due(
        status(total=1000, succeeded=900, requests=901, queued=100), now=100 + OTHER_WORKERS_AFTER + 0.1
    )


def test_a_rerun_answered_from_the_cache_starts_no_other_worker() -> None:
    # The run answers cached lines itself as it feeds them: lines finish, no call is made, and no line
    # waits for a worker.
    ramp = WorkerRamp()
    assert not ramp.due(status(total=50_000, queued=50_000), now=0)
    ramp.first_up(start_seconds=4, now=4)
    for tenth in range(50, 500):
        done = tenth * 100
        cached = status(total=50_000, succeeded=done, cached=done, queued=50_000 - done)
        assert not ramp.due(cached, now=tenth / 10)
    # The cache has no more: lines wait, no call is made (a limit holds them): the others start.
    held = status(total=50_000, succeeded=49_900, cached=49_900, queued=100)
    assert not ramp.due(held, now=50 + OTHER_WORKERS_AFTER - 0.1)
    assert ramp.due(held, now=50 + OTHER_WORKERS_AFTER + 0.1)
