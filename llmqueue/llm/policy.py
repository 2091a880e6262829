"""What a job may choose: the question, never where the worker's credentials go.

A job names its model and passes ``params`` to LiteLLM. Both are checked here, against the worker's
``[llm]`` settings (or the job's group):

- ``params`` pass only if their name is an OpenAI chat or embeddings parameter, a documented provider
  extra (``ALLOWED_PARAMS``), or listed in the settings' ``allowed_params``. Everything else that LiteLLM
  would take (``mock_response``, ``custom_llm_provider``, ``extra_headers``, ``callbacks``, ``client``,
  ``aws_*_endpoint``, ``vertex_credentials`` …) can re-route the call, fake its answer or carry secrets.
- ``model`` is checked where the call goes. A ``model_name`` of the ``model_list`` goes to one of its
  deployments, with that deployment's own endpoint and key (never ``[llm]``'s): it passes. Any other
  model must be served by the provider the ``[llm]`` credentials are for (LiteLLM's
  ``get_llm_provider`` of ``[llm] model``), unless it matches one of the settings' ``allowed_models``
  patterns (fnmatch): a worker's key for OpenAI is never sent to an endpoint a job picked.
- With ``disable_vision``, a chat message of images only is refused: without its images it would be
  sent empty (OpenAI takes ``"content": []``, LiteLLM gives Anthropic a placeholder) and answered.
- ``[llm]``'s ``api_key``/``base_url`` go only with calls to their own provider
  (:func:`carries_credentials`). The embedding model of another provider (``LLM_MODEL`` Anthropic's,
  ``embedding_model`` OpenAI's) is called with that provider's own key from the worker's environment
  (``OPENAI_API_KEY``), as LiteLLM reads it; a worker that has none refuses the job before any request.

Pure functions: the producer runs them at submission (when its settings are the workers'), the worker
before every call.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Collection, Sequence
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
        "stream",
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


def refusal(
    job: Job,
    llm: LLMConfig,
    configured_model: str,
    *,
    routed: Collection[str] = (),
    missing_keys: Callable[[str], Sequence[str]] | None = None,
) -> str | None:
    """Why ``job`` may not run with ``llm`` (whose own model is ``configured_model``); None if it may.

    ``routed``: the ``model_list``'s model names (their deployments bring their own credentials).
    ``missing_keys``: the environment variables a model's provider needs and the worker lacks
    (:func:`missing_provider_keys`); None where the worker's environment is not known (a producer).
    """
    unknown = sorted(set(job.params) - ALLOWED_PARAMS - set(llm.allowed_params))
    if unknown:
        return (
            f"params {', '.join(unknown)} may not be set by a job: only OpenAI's chat and embeddings "
            "parameters and documented provider extras are passed on (an operator may add names with "
            "allowed_params)"
        )
    if llm.disable_vision and job.kind == "chat":
        emptied = image_only_messages(job.messages)
        if emptied:
            return (
                f"message {', '.join(map(str, emptied))} holds only images, and disable_vision "
                "(LLM_DISABLE_VISION) takes images out: nothing of it would be sent; add its text, or "
                "run it where vision is on"
            )
    destination = job.model or configured_model
    if destination in routed:
        return None
    if job.model is not None and job.model != configured_model:
        refused = _model_refusal(job.model, llm)
        if refused is not None:
            return refused
    has_credentials = llm.api_key is not None or llm.base_url is not None
    if missing_keys is None or not has_credentials or carries_credentials(destination, llm):
        return None
    missing = missing_keys(destination)
    if not missing:
        return None
    return (
        f"model {destination!r} is served by {provider_of(destination) or 'another provider'}, and this "
        f"worker has no credentials for it: its [llm] api_key/base_url are for "
        f"{provider_of(llm.model) or llm.model!r} ({llm.model}) and go to no other provider; set "
        f"{' and '.join(missing)} in the workers' environment, or serve the model from a model_list "
        "deployment with its own api_key"
    )


def _model_refusal(model: str, llm: LLMConfig) -> str | None:
    if any(fnmatch.fnmatchcase(model, pattern) for pattern in llm.allowed_models):
        return None
    wanted, configured = provider_of(model), provider_of(llm.model)
    if wanted is not None and wanted == configured:
        return None
    return (
        f"model {model!r} is served by {wanted or 'a provider LiteLLM cannot tell'}, but this "
        f"worker's credentials are for {configured or llm.model!r} ({llm.model}); an operator "
        "may allow it with an allowed_models pattern, or serve it from a model_list deployment"
    )


def carries_credentials(model: str, llm: LLMConfig) -> bool:
    """Whether a call to ``model`` (not a ``model_list`` name) goes with ``[llm]``'s api_key and
    base_url: it is ``[llm] model``, served by the same provider, or matches ``allowed_models``."""
    if model == llm.model or any(fnmatch.fnmatchcase(model, p) for p in llm.allowed_models):
        return True
    provider = provider_of(model)
    return provider is not None and provider == provider_of(llm.model)


def image_only_messages(messages: list[dict[str, Any]]) -> list[int]:
    """The 1-based numbers of the messages whose content is images only (nothing left without them)."""
    return [
        number
        for number, message in enumerate(messages, start=1)
        if isinstance(message.get("content"), list)
        and message["content"]
        and all(is_image_part(part) for part in message["content"])
    ]


def is_image_part(part: Any) -> bool:
    """Whether a content part is an image (OpenAI's ``image_url``, Anthropic's ``image``, ``input_image``)."""
    return isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image")


def worker_refusal(job: Job, settings: Settings) -> str | None:
    """``refusal`` as a worker makes it, before a call: with the ``model_list``'s names and the keys
    in the worker's own environment."""
    llm = settings.llm_for(job.llm_config)
    return refusal(
        job,
        llm,
        configured_model_for(job, llm),
        routed=routed_names(settings),
        missing_keys=missing_provider_keys,
    )


def routed_names(settings: Settings) -> frozenset[str]:
    """The ``model_name``s of the settings' ``model_list``."""
    return frozenset(d.model_name for d in settings.model_list)


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
    return refusal(job, llm, configured_model_for(job, llm), routed=routed_names(settings))


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


@functools.lru_cache(maxsize=256)
def missing_provider_keys(model: str) -> tuple[str, ...]:
    """The environment variables ``model``'s provider needs that this process's environment lacks
    (LiteLLM's ``validate_environment``, what LiteLLM itself would read for the call)."""
    from litellm import validate_environment

    try:
        found = validate_environment(model=model)
    except Exception:
        return ()
    return tuple(str(k) for k in found.get("missing_keys") or ())
