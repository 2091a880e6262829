"""Token estimates made before a call (for the limiter) and usage read back after it."""

from typing import Any

import litellm
import pytest
from litellm.types.utils import Usage

from llmqueue.limits.tokens import CompletionSizes, estimate_tokens, uncached_prompt_tokens, usage_tokens
from llmqueue.models import Job

MODEL = "gpt-4o"
MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "What colour is the sky on a clear day?"},
]


def chat_job(params: dict[str, Any] | None = None, messages: list[dict[str, Any]] | None = None) -> Job:
    return Job(messages=messages or MESSAGES, params=params or {})


def prompt_tokens(messages: list[dict[str, Any]] = MESSAGES) -> int:
    return int(litellm.token_counter(model=MODEL, messages=messages))


# ---- estimate_tokens: chat -----------------------------------------------------------------------


def test_estimate_is_prompt_tokens_plus_max_tokens_when_set() -> None:
    assert (
        estimate_tokens(chat_job({"max_tokens": 50}), MODEL, default_completion_tokens=1024)
        == prompt_tokens() + 50
    )


def test_estimate_uses_default_completion_tokens_without_max_tokens() -> None:
    assert estimate_tokens(chat_job(), MODEL, default_completion_tokens=1024) == prompt_tokens() + 1024


def test_estimate_prefers_max_completion_tokens_over_max_tokens() -> None:
    job = chat_job({"max_completion_tokens": 30, "max_tokens": 500})

    assert estimate_tokens(job, MODEL, default_completion_tokens=1024) == prompt_tokens() + 30


def test_estimate_with_zero_max_tokens_adds_no_completion() -> None:
    assert (
        estimate_tokens(chat_job({"max_tokens": 0}), MODEL, default_completion_tokens=1024) == prompt_tokens()
    )


def test_estimate_ignores_a_non_numeric_max_tokens() -> None:
    job = chat_job({"max_tokens": "lots"})

    assert estimate_tokens(job, MODEL, default_completion_tokens=100) == prompt_tokens() + 100


def test_estimate_grows_with_the_prompt() -> None:
    long_messages = [{"role": "user", "content": "word " * 500}]

    short = estimate_tokens(chat_job(), MODEL, default_completion_tokens=0)
    long = estimate_tokens(chat_job(messages=long_messages), MODEL, default_completion_tokens=0)

    assert long > short + 400


def test_estimate_for_a_model_litellm_does_not_know_is_still_positive() -> None:
    assert estimate_tokens(chat_job(), "openai/unknown-sim", default_completion_tokens=0) > 0


def test_estimate_counts_text_content_parts() -> None:
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "word " * 200}, {"type": "text", "text": "end"}],
        }
    ]

    estimate = estimate_tokens(chat_job(messages=parts), MODEL, default_completion_tokens=0)

    assert isinstance(estimate, int)
    assert estimate >= 200


def test_estimate_of_unusual_content_parts_does_not_crash() -> None:
    parts = [
        {
            "role": "user",
            "content": [{"type": "mystery"}, "bare string", 5, {"type": "text", "text": "hi " * 80}],
        }
    ]

    estimate = estimate_tokens(chat_job(messages=parts), MODEL, default_completion_tokens=10)

    assert isinstance(estimate, int)
    assert estimate >= 10 + 20


def test_estimate_of_tool_call_message_without_content_does_not_crash() -> None:
    messages = [
        {"role": "user", "content": "call it"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ]

    assert estimate_tokens(chat_job(messages=messages), MODEL, default_completion_tokens=0) > 0


# ---- estimate_tokens: embeddings -----------------------------------------------------------------


def test_embedding_estimate_counts_a_string_input() -> None:
    job = Job(kind="embedding", input="the quick brown fox")

    assert estimate_tokens(job, MODEL, default_completion_tokens=1024) == litellm.token_counter(
        model=MODEL, text="the quick brown fox"
    )


def test_embedding_estimate_sums_every_input_text_and_adds_no_completion() -> None:
    texts = ["the quick brown fox", "jumps over the lazy dog " * 20]
    job = Job(kind="embedding", input=texts, params={"max_tokens": 500})

    expected = sum(litellm.token_counter(model=MODEL, text=text) for text in texts)
    assert estimate_tokens(job, MODEL, default_completion_tokens=1024) == expected


def test_embedding_estimate_grows_with_the_number_of_inputs() -> None:
    one = Job(kind="embedding", input=["same text here"])
    three = Job(kind="embedding", input=["same text here"] * 3)

    assert estimate_tokens(three, MODEL, 0) == 3 * estimate_tokens(one, MODEL, 0)


# ---- usage_tokens --------------------------------------------------------------------------------


def test_usage_tokens_reads_total_tokens_of_a_litellm_response() -> None:
    response = litellm.ModelResponse(usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7))

    assert usage_tokens(response) == 7


def test_usage_tokens_reads_an_embedding_response() -> None:
    response = litellm.EmbeddingResponse(usage=Usage(prompt_tokens=5, total_tokens=5))

    assert usage_tokens(response) == 5


def test_usage_tokens_reads_a_dict_response() -> None:
    assert usage_tokens({"usage": {"prompt_tokens": 2, "completion_tokens": 9, "total_tokens": 11}}) == 11


def test_usage_tokens_reads_a_dict_usage_on_an_object() -> None:
    class Response:
        usage = {"total_tokens": 13}

    assert usage_tokens(Response()) == 13


def test_usage_tokens_converts_a_float_total_to_int() -> None:
    assert usage_tokens({"usage": {"total_tokens": 12.0}}) == 12


def test_usage_tokens_of_zero_usage_is_zero_not_none() -> None:
    assert usage_tokens({"usage": {"total_tokens": 0}}) == 0


@pytest.mark.parametrize(
    "response",
    [
        None,
        {},
        {"usage": None},
        {"usage": {}},
        {"usage": {"prompt_tokens": 3}},
        litellm.ModelResponse(),
        object(),
    ],
    ids=["none", "empty-dict", "null-usage", "empty-usage", "no-total", "response-without-usage", "object"],
)
def test_usage_tokens_is_none_when_no_total_is_reported(response: Any) -> None:
    assert usage_tokens(response) is None


def test_input_tokens_counted_leave_out_prompt_cache_reads() -> None:
    # As LiteLLM builds an Anthropic answer's usage: cache reads are in prompt_tokens and in its details.
    usage = Usage(prompt_tokens=1200, completion_tokens=10, total_tokens=1210, cache_read_input_tokens=1000)
    response = litellm.ModelResponse(usage=usage)
    assert uncached_prompt_tokens(response) == 200
    assert uncached_prompt_tokens({"usage": {"prompt_tokens": 30, "completion_tokens": 2}}) == 30
    assert uncached_prompt_tokens({"choices": []}) is None


# ---- CompletionSizes: what a job without max_tokens reserves ----------------------------------------


def test_completion_allowance_is_the_default_until_answers_show_the_sizes() -> None:
    sizes = CompletionSizes()
    sizes.observe(MODEL, 20)
    sizes.observe(MODEL, 35)
    assert sizes.allowance(MODEL, 1024) == 1024
    sizes.observe(MODEL, 12)
    assert sizes.allowance(MODEL, 1024) == 35  # the largest of the recent answers
    assert sizes.allowance("other-model", 1024) == 1024  # each model its own


def test_completion_allowance_follows_the_recent_answers_and_never_passes_the_default() -> None:
    sizes = CompletionSizes()
    for tokens in [900] + [10] * CompletionSizes.SAMPLES:
        sizes.observe(MODEL, tokens)
    assert sizes.allowance(MODEL, 1024) == 10  # the long answer left the window
    sizes.observe(MODEL, 5000)
    assert sizes.allowance(MODEL, 1024) == 1024
