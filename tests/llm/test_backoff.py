"""RetryPolicy: the delay before each retry, a pure function of the attempt and the settings."""

import pytest

from llmqueue.llm.backoff import RetryPolicy
from llmqueue.settings import LLMConfig


def never_called() -> float:
    raise AssertionError("rand must not be called when jitter is 0")


def test_default_policy_matches_openhands_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(
        num_retries=4, min_wait=5.0, max_wait=30.0, multiplier=2.0, jitter=0.0
    )


def test_default_delays_for_retries_one_to_four_are_5_5_8_16() -> None:
    policy = RetryPolicy()

    assert [policy.delay(n, rand=never_called) for n in (1, 2, 3, 4)] == [5.0, 5.0, 8.0, 16.0]


def test_default_policy_allows_five_attempts() -> None:
    assert RetryPolicy().max_attempts == 5


@pytest.mark.parametrize("failed_attempts", [1, 2, 3, 4])
def test_default_policy_allows_a_retry_after_up_to_four_failures(failed_attempts: int) -> None:
    assert RetryPolicy().allows_retry(failed_attempts) is True


def test_default_policy_refuses_a_retry_after_five_failures() -> None:
    assert RetryPolicy().allows_retry(5) is False


def test_zero_retries_means_one_attempt_and_no_retry() -> None:
    policy = RetryPolicy(num_retries=0)

    assert (policy.max_attempts, policy.allows_retry(1)) == (1, False)


@pytest.mark.parametrize(
    ("multiplier", "min_wait", "max_wait", "expected"),
    [
        (1.0, 1.0, 10.0, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
        (3.0, 0.0, 100.0, [3.0, 6.0, 12.0, 24.0]),
        (2.0, 0.0, 1000.0, [2.0, 4.0, 8.0, 16.0, 32.0]),
        (0.5, 2.0, 3.0, [2.0, 2.0, 2.0, 3.0, 3.0]),
        (2.0, 7.0, 7.0, [7.0, 7.0, 7.0, 7.0]),
    ],
)
def test_delay_is_multiplier_times_power_of_two_clamped_to_the_wait_bounds(
    multiplier: float, min_wait: float, max_wait: float, expected: list[float]
) -> None:
    policy = RetryPolicy(
        num_retries=len(expected), min_wait=min_wait, max_wait=max_wait, multiplier=multiplier
    )

    assert [policy.delay(n, rand=never_called) for n in range(1, len(expected) + 1)] == expected


def test_retry_after_longer_than_the_schedule_raises_the_delay() -> None:
    assert RetryPolicy().delay(1, retry_after=12.0) == 12.0


def test_retry_after_shorter_than_the_schedule_does_not_lower_the_delay() -> None:
    assert RetryPolicy().delay(4, retry_after=1.0) == 16.0


def test_retry_after_below_min_wait_is_raised_to_min_wait() -> None:
    assert RetryPolicy().delay(1, retry_after=0.0) == 5.0


def test_retry_after_beyond_max_wait_is_clamped_to_max_wait() -> None:
    assert RetryPolicy().delay(1, retry_after=100.0) == 30.0


def test_jitter_scales_the_delay_by_one_plus_jitter_times_rand() -> None:
    policy = RetryPolicy(min_wait=0.0, max_wait=100.0, jitter=0.5)

    assert policy.delay(3, rand=lambda: 1.0) == 12.0  # 8 * 1.5


def test_jitter_with_rand_zero_leaves_the_delay_unchanged() -> None:
    policy = RetryPolicy(min_wait=0.0, max_wait=100.0, jitter=0.5)

    assert policy.delay(3, rand=lambda: 0.0) == 8.0


def test_jittered_delay_is_still_clamped_to_max_wait() -> None:
    policy = RetryPolicy(jitter=0.5)  # 16 * 1.5 = 24, 32 * 1.5 = 48 > 30

    assert [policy.delay(n, rand=lambda: 1.0) for n in (4, 5)] == [24.0, 30.0]


def test_jitter_applies_on_top_of_retry_after_then_clamps() -> None:
    policy = RetryPolicy(jitter=0.5)

    assert policy.delay(1, retry_after=12.0, rand=lambda: 1.0) == 18.0


def test_zero_jitter_never_calls_rand() -> None:
    assert RetryPolicy(jitter=0.0).delay(3, rand=never_called) == 8.0


@pytest.mark.parametrize("retry_number", [0, -1])
def test_retry_number_below_one_raises_value_error(retry_number: int) -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        RetryPolicy().delay(retry_number)


def test_from_llm_maps_every_retry_field_of_the_llm_config() -> None:
    llm = LLMConfig(
        num_retries=7, retry_min_wait=1.5, retry_max_wait=90, retry_multiplier=3, retry_jitter=0.25
    )

    assert RetryPolicy.from_llm(llm) == RetryPolicy(
        num_retries=7, min_wait=1.5, max_wait=90.0, multiplier=3.0, jitter=0.25
    )


def test_from_llm_of_default_llm_config_is_the_default_policy() -> None:
    assert RetryPolicy.from_llm(LLMConfig()) == RetryPolicy()
