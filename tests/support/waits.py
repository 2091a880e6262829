"""Checks on the waits the limiter answers, for tests on a machine that may be busy."""

import time


def assert_refilled_wait(wait: float, expected: float, *, since: float) -> None:
    """``wait`` is ``expected`` less the refill since the bucket's first call, made after ``since``
    (``time.monotonic()``): a loaded machine may take tens of milliseconds over the calls before."""
    elapsed = time.monotonic() - since
    assert expected - elapsed - 0.01 <= wait <= expected + 0.01, (wait, expected, elapsed)
