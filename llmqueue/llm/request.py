"""Turn a job and the worker's LLM settings into the arguments of one LiteLLM call.

Pure, and free of LiteLLM's import for calls to ``[llm] model``: how each setting reaches the call is
tested without HTTP, and a process that only needs a request's cache key (``llmqueue run`` answering
lines from the cache) does not spend seconds importing LiteLLM for it. A call to another model asks
LiteLLM which provider serves it (whether ``[llm]``'s credentials go with it).
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

from llmqueue.limits.routing import deployment_kwargs
from llmqueue.llm.policy import carries_credentials, is_image_part
from llmqueue.model_list import ResolvedDeployment
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

logger = logging.getLogger("llmqueue.worker")

CACHE_CONTROL = {"type": "ephemeral"}


def job_model(job: Job, llm: LLMConfig) -> str:
    """The model string a job is sent to."""
    if job.model:
        return job.model
    if job.kind == "embedding":
        return llm.embedding_deployment_name or llm.embedding_model
    return llm.model


def call_kwargs(
    job: Job,
    llm: LLMConfig,
    *,
    supports_caching: bool | None,
    model: str | None = None,
    deployment: ResolvedDeployment | None = None,
) -> dict[str, Any]:
    """The keyword arguments for ``litellm.acompletion`` / ``aembedding``, sent to ``model`` (a fallback
    of the job's own, once its retries are spent) or else to the job's model; with ``deployment`` (the
    ``model_list`` deployment admission chose), to that deployment, with its credentials and endpoint.

    ``supports_caching`` is LiteLLM's verdict on the model that is called (the deployment's); None where
    no marks are wanted (a cache key, a Batch API body) and none are warned about. Prompt-
    caching marks (``caching_prompt``) go only to the provider's own endpoint: a call with an
    ``api_base`` (``[llm] base_url``, a deployment's) or to a model LiteLLM does not list as caching
    gets none, and the worker says so once per model.

    LiteLLM's and the OpenAI SDK's own retries are off (``num_retries=0``, ``max_retries=0``): attempts
    are counted in one place, the worker.
    """
    kwargs: dict[str, Any] = dict(job.params)
    kwargs.update(model=model or job_model(job, llm), timeout=llm.timeout, num_retries=0, max_retries=0)
    # [llm]'s credentials and endpoint go only to their own provider (policy.carries_credentials).
    if (
        deployment is None
        and (llm.api_key is not None or llm.base_url or llm.api_version)
        and carries_credentials(kwargs["model"], llm)
    ):
        if llm.api_key is not None:
            kwargs["api_key"] = llm.api_key.get_secret_value()
        if llm.base_url:
            kwargs["api_base"] = llm.base_url
        if llm.api_version:
            kwargs["api_version"] = llm.api_version
    if llm.drop_params:
        kwargs["drop_params"] = True
    if job.kind == "embedding":
        kwargs["input"] = job.input
    else:
        messages = job.messages
        if llm.disable_vision:
            messages = strip_images(messages)
        called = deployment.model if deployment is not None else kwargs["model"]
        endpoint = deployment.params.get("api_base") if deployment is not None else kwargs.get("api_base")
        wanted = llm.caching_prompt and supports_caching is not None
        if wanted and _takes_cache_marks(called, endpoint, bool(supports_caching)):
            messages = mark_cache_points(messages)
        kwargs["messages"] = messages
    if deployment is not None:
        kwargs = deployment_kwargs(kwargs, deployment, job.params)
    return kwargs


def _takes_cache_marks(model: str, endpoint: Any, supports_caching: bool) -> bool:
    if endpoint:
        _say_unmarked(
            model,
            f"its calls go to {endpoint}, not the provider's own endpoint (OpenAI-compatible endpoints may "
            "refuse cache_control)",
        )
        return False
    if not supports_caching:
        _say_unmarked(model, "LiteLLM does not list it as supporting prompt caching")
        return False
    return True


@functools.lru_cache(maxsize=256)
def _say_unmarked(model: str, reason: str) -> None:
    """Warn once per model and reason that ``caching_prompt`` is on but its calls go unmarked."""
    logger.warning(
        "caching_prompt is on, but %s gets no prompt-caching marks: %s; set caching_prompt = false "
        "(LLM_CACHING_PROMPT=false) to silence this",
        model,
        reason,
    )


def strip_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages without image parts (``disable_vision``); text parts are kept in order. A message
    of images only is refused before this (``policy.refusal``): it would be sent empty."""
    stripped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [p for p in content if not is_image_part(p)]}
        stripped.append(message)
    return stripped


def mark_cache_points(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``cache_control`` to the system prompt and the last two user messages (as OpenHands does)."""
    marked = copy.deepcopy(messages)
    targets = [m for m in marked if m.get("role") == "system"][:1]
    targets += [m for m in marked if m.get("role") == "user"][-2:]
    for message in targets:
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = [{"type": "text", "text": content, "cache_control": CACHE_CONTROL}]
        elif isinstance(content, list) and content and isinstance(content[-1], dict):
            content[-1] = {**content[-1], "cache_control": CACHE_CONTROL}
    return marked
