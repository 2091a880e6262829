"""redact / redact_url: secrets, URL passwords and OpenAI-style keys never reach logs or results."""

import pytest

from llmqueue.redaction import MASK, redact, redact_url


def test_given_secret_is_replaced_everywhere_it_occurs() -> None:
    assert redact("key=hunter22 and again hunter22", ["hunter22"]) == "key=*** and again ***"


def test_several_secrets_are_all_replaced() -> None:
    assert redact("a=alpha-1 b=bravo-2", ["alpha-1", "bravo-2"]) == "a=*** b=***"


@pytest.mark.parametrize("secret", ["", "abc"])
def test_empty_or_very_short_secrets_are_not_masked(secret: str) -> None:
    # Masking "abc" would shred ordinary words; empty would loop over every gap.
    assert redact("abcdef", [secret]) == "abcdef"


def test_text_without_secrets_is_unchanged() -> None:
    text = "Error: model gpt-4o returned 500 for task-abcdefghijk"

    assert redact(text) == text


def test_url_password_is_masked_and_user_kept() -> None:
    assert (
        redact("connect to redis://user:pw@host:6379/0 failed")
        == "connect to redis://user:***@host:6379/0 failed"
    )


def test_url_password_without_user_is_masked() -> None:
    assert redact("redis://:s3cret@localhost:6379") == "redis://:***@localhost:6379"


def test_url_without_password_is_unchanged() -> None:
    assert redact("see https://api.openai.com/v1 and redis://localhost:6379/0") == (
        "see https://api.openai.com/v1 and redis://localhost:6379/0"
    )


def test_every_url_password_in_the_text_is_masked() -> None:
    text = "primary rediss://a:one@h1 replica redis://b:two@h2"

    assert redact(text) == "primary rediss://a:***@h1 replica redis://b:***@h2"


@pytest.mark.parametrize(
    "key",
    ["sk-abcdefgh12345678", "sk-proj-AbC_dEf-123456789", "pk-lf-0123456789abcdef", "rk-live_abcdefgh"],
)
def test_openai_style_keys_are_masked(key: str) -> None:
    assert redact(f"Incorrect API key provided: {key}.") == f"Incorrect API key provided: {MASK}."


def test_short_sk_prefixed_words_are_not_mistaken_for_keys() -> None:
    assert redact("sk-short is fine") == "sk-short is fine"


def test_redact_url_masks_the_password() -> None:
    assert redact_url("redis://user:pw@host") == "redis://user:***@host"


def test_redact_url_leaves_a_url_without_password_unchanged() -> None:
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_redact_url_keeps_path_and_query() -> None:
    assert (
        redact_url("postgres://app:p%40ss@db:5432/main?ssl=true")
        == "postgres://app:***@db:5432/main?ssl=true"
    )
