"""llm_call: how a job and the worker's LLM settings become the keyword arguments of one LiteLLM call."""

import copy
from typing import Any

import litellm
import pytest
from pydantic import SecretStr

from llmqueue.llm.call import supports_prompt_caching
from llmqueue.llm.request import CACHE_CONTROL, call_kwargs, job_model, mark_cache_points, strip_images
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def chat_job(**fields: Any) -> Job:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return Job(**fields)


def embedding_job(**fields: Any) -> Job:
    return Job(kind="embedding", input=["first text", "second text"], **fields)


def conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "reply one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "reply two"},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]


# ---- call_kwargs: settings -----------------------------------------------------------------------


def test_call_kwargs_turn_off_litellm_and_openai_retries() -> None:
    kwargs = call_kwargs(chat_job(), LLMConfig(), supports_caching=False)

    assert (kwargs["num_retries"], kwargs["max_retries"]) == (0, 0)


def test_call_kwargs_retries_stay_off_even_when_job_params_ask_for_them() -> None:
    kwargs = call_kwargs(
        chat_job(params={"num_retries": 5, "max_retries": 5}), LLMConfig(), supports_caching=False
    )

    assert (kwargs["num_retries"], kwargs["max_retries"]) == (0, 0)


def test_call_kwargs_timeout_comes_from_settings() -> None:
    kwargs = call_kwargs(chat_job(), LLMConfig(timeout=42.5), supports_caching=False)

    assert kwargs["timeout"] == 42.5


def test_call_kwargs_api_key_is_the_plain_value_of_the_secret() -> None:
    llm = LLMConfig(api_key=SecretStr("sk-test-secret-value"))

    assert call_kwargs(chat_job(), llm, supports_caching=False)["api_key"] == "sk-test-secret-value"


def test_call_kwargs_without_api_key_send_no_api_key() -> None:
    assert "api_key" not in call_kwargs(chat_job(), LLMConfig(), supports_caching=False)


def test_call_kwargs_api_base_comes_from_base_url() -> None:
    kwargs = call_kwargs(chat_job(), LLMConfig(base_url="http://127.0.0.1:8000/v1"), supports_caching=False)

    assert kwargs["api_base"] == "http://127.0.0.1:8000/v1"
    assert "base_url" not in kwargs


def test_call_kwargs_api_version_comes_from_settings() -> None:
    kwargs = call_kwargs(chat_job(), LLMConfig(api_version="2024-06-01"), supports_caching=False)

    assert kwargs["api_version"] == "2024-06-01"


def test_call_kwargs_without_endpoint_settings_send_no_api_base_or_version() -> None:
    kwargs = call_kwargs(chat_job(), LLMConfig(), supports_caching=False)

    assert "api_base" not in kwargs
    assert "api_version" not in kwargs


def test_call_kwargs_drop_params_is_sent_when_enabled() -> None:
    assert call_kwargs(chat_job(), LLMConfig(drop_params=True), supports_caching=False)["drop_params"] is True


def test_call_kwargs_drop_params_is_not_sent_when_disabled() -> None:
    assert "drop_params" not in call_kwargs(chat_job(), LLMConfig(drop_params=False), supports_caching=False)


def test_call_kwargs_job_params_pass_through() -> None:
    params = {"max_tokens": 64, "temperature": 0.2, "response_format": {"type": "json_object"}, "seed": 7}

    kwargs = call_kwargs(chat_job(params=params), LLMConfig(), supports_caching=False)

    assert {key: kwargs[key] for key in params} == params


def test_call_kwargs_model_is_the_settings_model_when_the_job_names_none() -> None:
    assert (
        call_kwargs(chat_job(), LLMConfig(model="openai/sim-1"), supports_caching=False)["model"]
        == "openai/sim-1"
    )


def test_call_kwargs_model_named_by_the_job_wins() -> None:
    kwargs = call_kwargs(
        chat_job(model="openai/job-model"), LLMConfig(model="openai/sim-1"), supports_caching=False
    )

    assert kwargs["model"] == "openai/job-model"


def test_call_kwargs_chat_messages_are_the_jobs_messages() -> None:
    job = chat_job(messages=conversation())

    kwargs = call_kwargs(job, LLMConfig(), supports_caching=False)

    assert kwargs["messages"] == conversation()
    assert "input" not in kwargs


# ---- embeddings ----------------------------------------------------------------------------------


def test_embedding_kwargs_carry_the_input_and_no_messages() -> None:
    kwargs = call_kwargs(embedding_job(), LLMConfig(), supports_caching=True)

    assert kwargs["input"] == ["first text", "second text"]
    assert "messages" not in kwargs


def test_embedding_model_is_the_embedding_model_setting() -> None:
    llm = LLMConfig(embedding_model="text-embedding-3-large")

    assert call_kwargs(embedding_job(), llm, supports_caching=False)["model"] == "text-embedding-3-large"


def test_embedding_deployment_name_wins_over_embedding_model() -> None:
    llm = LLMConfig(embedding_model="text-embedding-3-large", embedding_deployment_name="azure/my-embeddings")

    assert job_model(embedding_job(), llm) == "azure/my-embeddings"


def test_embedding_job_naming_a_model_uses_it() -> None:
    llm = LLMConfig(embedding_deployment_name="azure/my-embeddings")

    assert job_model(embedding_job(model="openai/emb-sim"), llm) == "openai/emb-sim"


def test_embedding_kwargs_get_credentials_and_retries_off_too() -> None:
    llm = LLMConfig(api_key=SecretStr("emb-secret-1234"), base_url="http://127.0.0.1:9/v1")

    kwargs = call_kwargs(embedding_job(), llm, supports_caching=False)

    assert (kwargs["api_key"], kwargs["api_base"], kwargs["num_retries"], kwargs["max_retries"]) == (
        "emb-secret-1234",
        "http://127.0.0.1:9/v1",
        0,
        0,
    )


# ---- disable_vision ------------------------------------------------------------------------------


def test_disable_vision_strips_image_parts_and_keeps_text_in_order() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "before"},
                IMAGE_PART,
                {"type": "text", "text": "after"},
                {"type": "input_image", "image_url": "x"},
                {"type": "image", "source": {}},
            ],
        }
    ]
    job = chat_job(messages=messages)

    kwargs = call_kwargs(job, LLMConfig(disable_vision=True, caching_prompt=False), supports_caching=False)

    assert kwargs["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "before"}, {"type": "text", "text": "after"}]}
    ]


def test_vision_enabled_keeps_image_parts() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE_PART]}]

    kwargs = call_kwargs(chat_job(messages=messages), LLMConfig(disable_vision=False), supports_caching=False)

    assert kwargs["messages"][0]["content"][1] == IMAGE_PART


def test_strip_images_leaves_string_content_and_the_input_untouched() -> None:
    messages = [
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [{"type": "text", "text": "t"}, IMAGE_PART]},
    ]
    original = copy.deepcopy(messages)

    stripped = strip_images(messages)

    assert stripped == [
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [{"type": "text", "text": "t"}]},
    ]
    assert messages == original


# ---- prompt caching ------------------------------------------------------------------------------


def test_caching_marks_the_system_prompt_and_the_last_two_user_messages() -> None:
    kwargs = call_kwargs(
        chat_job(messages=conversation()), LLMConfig(caching_prompt=True), supports_caching=True
    )

    marked = [i for i, m in enumerate(kwargs["messages"]) if _has_cache_control(m)]
    assert marked == [0, 3, 5]


def test_caching_turns_string_content_into_a_marked_text_part() -> None:
    kwargs = call_kwargs(
        chat_job(messages=conversation()), LLMConfig(caching_prompt=True), supports_caching=True
    )

    assert kwargs["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "be brief", "cache_control": CACHE_CONTROL}],
    }


def test_caching_marks_the_last_part_of_list_content() -> None:
    kwargs = call_kwargs(
        chat_job(messages=conversation()), LLMConfig(caching_prompt=True), supports_caching=True
    )

    assert kwargs["messages"][5]["content"] == [
        {"type": "text", "text": "three", "cache_control": CACHE_CONTROL}
    ]


def test_caching_does_not_mutate_the_jobs_messages() -> None:
    job = chat_job(messages=conversation())

    call_kwargs(job, LLMConfig(caching_prompt=True), supports_caching=True)

    assert job.messages == conversation()


def test_mark_cache_points_does_not_mutate_its_input() -> None:
    messages = conversation()

    mark_cache_points(messages)

    assert messages == conversation()


def test_caching_is_skipped_when_the_model_does_not_support_it() -> None:
    kwargs = call_kwargs(
        chat_job(messages=conversation()), LLMConfig(caching_prompt=True), supports_caching=False
    )

    assert kwargs["messages"] == conversation()


def test_caching_is_skipped_when_caching_prompt_is_off() -> None:
    kwargs = call_kwargs(
        chat_job(messages=conversation()), LLMConfig(caching_prompt=False), supports_caching=True
    )

    assert kwargs["messages"] == conversation()


def test_caching_marks_only_the_first_system_message() -> None:
    messages = [
        {"role": "system", "content": "first"},
        {"role": "system", "content": "second"},
        {"role": "user", "content": "q"},
    ]

    marked = mark_cache_points(messages)

    assert [_has_cache_control(m) for m in marked] == [True, False, True]


def test_disable_vision_and_caching_combine() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE_PART]}]
    llm = LLMConfig(disable_vision=True, caching_prompt=True)

    kwargs = call_kwargs(chat_job(messages=messages), llm, supports_caching=True)

    assert kwargs["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "look", "cache_control": CACHE_CONTROL}]}
    ]


def _has_cache_control(message: dict[str, Any]) -> bool:
    content = message["content"]
    return isinstance(content, list) and any("cache_control" in part for part in content)


# ---- supports_prompt_caching ---------------------------------------------------------------------


def test_supports_prompt_caching_is_true_for_a_model_litellm_marks_as_caching() -> None:
    # LiteLLM's bundled cost map flags gpt-4o with supports_prompt_caching = true.
    assert litellm.model_cost["gpt-4o"]["supports_prompt_caching"] is True

    assert supports_prompt_caching("gpt-4o") is True


def test_supports_prompt_caching_is_true_for_a_caching_anthropic_model() -> None:
    assert litellm.model_cost["claude-sonnet-4-5"]["supports_prompt_caching"] is True

    assert supports_prompt_caching("anthropic/claude-sonnet-4-5") is True


def test_supports_prompt_caching_of_claude_3_5_sonnet_20240620_is_false_in_this_litellm() -> None:
    # This model is no longer in LiteLLM's bundled cost map, so LiteLLM itself does not know it caches.
    assert "claude-3-5-sonnet-20240620" not in litellm.model_cost

    assert supports_prompt_caching("anthropic/claude-3-5-sonnet-20240620") is False


def test_supports_prompt_caching_of_an_unknown_model_is_false() -> None:
    assert supports_prompt_caching("openai/unknown-sim") is False


@pytest.mark.parametrize("model", ["", "not a provider/???"])
def test_supports_prompt_caching_never_raises(model: str) -> None:
    assert supports_prompt_caching(model) is False
