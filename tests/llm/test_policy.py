"""What a job may set: the params allowlist and the provider its model belongs to."""

from __future__ import annotations

import pytest

from llmqueue.llm.policy import ALLOWED_PARAMS, provider_of, refusal, submission_refusal
from llmqueue.models import Job
from llmqueue.settings import LLMConfig, Settings

CHAT = [{"role": "user", "content": "Quelle heure est-il ?"}]


def job(**fields: object) -> Job:
    return Job.parse({"messages": CHAT, **fields})


@pytest.mark.parametrize(
    "name",
    [
        "mock_response",
        "custom_llm_provider",
        "extra_headers",
        "callbacks",
        "success_callback",
        "client",
        "aws_bedrock_runtime_endpoint",
        "vertex_credentials",
        "timeout",
    ],
)
def test_a_param_that_reroutes_fakes_or_carries_secrets_is_refused_by_name(name: str) -> None:
    reason = refusal(
        job(params={name: "x", "temperature": 0}), LLMConfig(model="openai/gpt-4o"), "openai/gpt-4o"
    )
    assert reason is not None and f"params {name} may not be set" in reason


def test_openai_parameters_and_provider_extras_pass() -> None:
    params = {"temperature": 0.1, "max_tokens": 5, "tools": [], "response_format": {"type": "json_object"}}
    assert refusal(job(params={**params, "top_k": 4}), LLMConfig(), "gpt-4o") is None
    assert {"dimensions", "encoding_format", "seed", "stop"} <= ALLOWED_PARAMS


def test_allowed_params_extends_the_list() -> None:
    llm = LLMConfig(allowed_params=["repetition_penalty", "guided_json"])
    assert refusal(job(params={"guided_json": {}}), llm, llm.model) is None


def test_a_model_of_another_provider_is_refused_unless_a_pattern_allows_it() -> None:
    llm = LLMConfig(model="openai/gpt-4o")
    assert refusal(job(model="openai/gpt-4o-mini"), llm, llm.model) is None
    assert refusal(job(model="gpt-4o-mini"), llm, llm.model) is None  # LiteLLM: openai as well
    reason = refusal(job(model="ollama_chat/llama3"), llm, llm.model)
    assert reason is not None and "served by ollama_chat" in reason and "allowed_models" in reason
    allowing = LLMConfig(model="openai/gpt-4o", allowed_models=["ollama_chat/*"])
    assert refusal(job(model="ollama_chat/llama3"), allowing, allowing.model) is None
    assert refusal(job(model="anthropic/claude-3-haiku"), allowing, allowing.model) is not None


def test_a_model_litellm_cannot_place_is_refused_unless_it_is_the_configured_one() -> None:
    assert provider_of("no-such-model-xyz") is None
    llm = LLMConfig(model="no-such-model-xyz")
    assert refusal(job(model="no-such-model-xyz"), llm, llm.model) is None
    assert refusal(job(model="other-unknown-xyz"), llm, llm.model) is not None


def test_a_producer_checks_only_when_its_settings_name_the_workers_model() -> None:
    risky = job(model="ollama_chat/llama3")
    assert submission_refusal(risky, Settings()) is None  # it cannot tell: the worker will
    assert submission_refusal(risky, Settings(llm=LLMConfig(model="openai/gpt-4o"))) is not None
    grouped = job(model="ollama_chat/llama3", llm_config="local")
    settings = Settings(
        llm=LLMConfig(model="openai/gpt-4o"), llm_groups={"local": {"model": "ollama_chat/x"}}
    )
    assert submission_refusal(grouped, settings) is None


def test_allowed_models_is_not_inherited_by_a_group() -> None:
    settings = Settings(
        llm=LLMConfig(model="openai/gpt-4o", allowed_models=["ollama_chat/*"]),
        llm_groups={"claude": {"model": "anthropic/claude-3-haiku", "api_key": "sk-ant-test"}},
    )
    assert settings.llm_for("claude").allowed_models == []


def test_a_model_list_name_passes_whatever_the_configured_provider() -> None:
    llm = LLMConfig(model="gpt-4o", api_key="sk-chat")
    assert refusal(job(model="evalmodel"), llm, llm.model, routed={"evalmodel"}) is None
    assert refusal(job(model="evalmodel"), llm, llm.model) is not None


def test_an_embedding_model_of_another_provider_without_its_own_key_is_refused() -> None:
    llm = LLMConfig(model="anthropic/claude-sonnet-4-5", api_key="sk-ant")
    embedding = Job.parse({"kind": "embedding", "input": "text"})
    reason = refusal(embedding, llm, llm.embedding_model, missing_keys=lambda model: ["OPENAI_API_KEY"])
    assert reason is not None and "no credentials" in reason and "OPENAI_API_KEY" in reason
    assert refusal(embedding, llm, llm.embedding_model, missing_keys=lambda model: []) is None


def test_the_chat_key_goes_only_with_calls_to_its_own_provider() -> None:
    from llmqueue.llm.request import call_kwargs

    llm = LLMConfig(model="anthropic/claude-sonnet-4-5", api_key="sk-ant", base_url="https://proxy.example")
    sent = call_kwargs(Job.parse({"kind": "embedding", "input": "text"}), llm, supports_caching=False)
    assert "api_key" not in sent and "api_base" not in sent
    chat = call_kwargs(job(), llm, supports_caching=False)
    assert chat["api_key"] == "sk-ant" and chat["api_base"] == "https://proxy.example"
    same = LLMConfig(model="openai/gpt-4o", api_key="sk-openai")
    embedding = Job.parse({"kind": "embedding", "input": "text"})
    assert call_kwargs(embedding, same, supports_caching=False)["api_key"] == "sk-openai"
