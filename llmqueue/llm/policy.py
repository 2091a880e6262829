"""What a job may choose: the question, never where the worker's credentials go.

A job names its model and passes ``params`` to LiteLLM. Both are checked here, against the worker's
``[llm]`` settings (or the job's group):

- ``params`` pass only if their name is an OpenAI chat or embeddings parameter, a documented provider
  extra (``ALLOWED_PARAMS``), or listed in the settings' ``allowed_params``. Everything else that LiteLLM
  would take (``mock_response``, ``custom_llm_provider``, ``extra_headers``, ``callbacks``, ``client``,
  ``aws_*_endpoint``, ``vertex_credentials`` …) can re-route the call, fake its answer or carry secrets.
- ``model`` must be served by the provider the credentials are configured for (LiteLLM's
  ``get_llm_provider``), unless it matches one of the settings' ``allowed_models`` patterns (fnmatch):
  a worker's key for OpenAI is never sent to an endpoint a job picked.

Pure functions: the producer runs them at submission (when its settings are the workers'), the worker
before every call.
"""

from __future__ import annotations

import fnmatch
import functools
from typing import Any

from llmqueue.models import Job
from llmqueue.settings import LLMConfig, Settings

OPENAI_CHAT_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
OPENAI_EMBEDDING_PARAMS = frozenset({"dimensions", "encoding_format", "user"})
# Provider extras LiteLLM documents as plain request options (they change the answer, not the route).
PROVIDER_EXTRA_PARAMS = frozenset(
    {"input_type", "min_p", "repetition_penalty", "safety_settings", "thinking", "top_k"}
)
ALLOWED_PARAMS = OPENAI_CHAT_PARAMS | OPENAI_EMBEDDING_PARAMS | PROVIDER_EXTRA_PARAMS


def refusal(job: Job, llm: LLMConfig, configured_model: str) -> str | None:
    """Why ``job`` may not run with ``llm`` (whose own model is ``configured_model``); None if it may."""
    unknown = sorted(set(job.params) - ALLOWED_PARAMS - set(llm.allowed_params))
    if unknown:
        return (
            f"params {', '.join(unknown)} may not be set by a job: only OpenAI's chat and embeddings "
            "parameters and documented provider extras are passed on (an operator may add names with "
            "allowed_params)"
        )
    if job.model is None or job.model == configured_model:
        return None
    if any(fnmatch.fnmatchcase(job.model, pattern) for pattern in llm.allowed_models):
        return None
    wanted, configured = provider_of(job.model), provider_of(configured_model)
    if wanted is not None and wanted == configured:
        return None
    return (
        f"model {job.model!r} is served by {wanted or 'a provider LiteLLM cannot tell'}, but this "
        f"worker's credentials are for {configured or configured_model!r} ({configured_model}); an operator "
        "may allow it with an allowed_models pattern"
    )


def submission_refusal(job: Job, settings: Settings) -> str | None:
    """``refusal`` at submission, when the producer's settings are those of the workers: the job's group
    (or ``[llm]``) sets its model there. Otherwise None: the worker checks."""
    if job.llm_config is not None:
        overrides = settings.llm_groups.get(job.llm_config)
        if overrides is None or not {"model", "embedding_model"}.intersection(overrides):
            return None
    elif not {"model", "embedding_model"}.intersection(settings.llm.model_fields_set):
        return None
    llm = settings.llm_for(job.llm_config)
    return refusal(job, llm, configured_model_for(job, llm))


def configured_model_for(job: Job, llm: LLMConfig) -> str:
    """The model the settings give jobs of this kind (what a job naming no model is sent to)."""
    if job.kind == "embedding":
        return llm.embedding_deployment_name or llm.embedding_model
    return llm.model


@functools.lru_cache(maxsize=1024)
def provider_of(model: str) -> str | None:
    """LiteLLM's provider name for ``model`` (``openai``, ``anthropic``, ``ollama_chat`` …); None if it
    cannot tell."""
    from litellm import get_llm_provider  # imported on first use: producers need not load LiteLLM early

    try:
        found: Any = get_llm_provider(model)
    except Exception:
        return None
    return str(found[1]) if found and found[1] else None
