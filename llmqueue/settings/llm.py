"""How to call the provider and how fast: ``[llm]`` (env ``LLM_*``), its ``[llm.<name>]`` groups,
and ``[limits."<scope>"]``.

The ``[llm]`` section and the ``LLM_*`` variables keep OpenHands' names and defaults; a group sets
keys over ``[llm]`` for the jobs that name it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator


class LLMConfig(BaseModel):
    """How to call the provider, and the 429/transient retry policy (env ``LLM_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = "gpt-4o"
    api_key: SecretStr | None = None
    base_url: str | None = None
    api_version: str | None = None
    embedding_model: str = "text-embedding-3-small"
    embedding_deployment_name: str | None = None
    drop_params: bool = True
    disable_vision: bool = False
    caching_prompt: bool = True
    input_cost_per_token: float | None = Field(
        None, ge=0, description="USD per prompt token of `model`, for a model LiteLLM has no price for"
    )
    output_cost_per_token: float | None = Field(
        None, ge=0, description="USD per completion token of `model` (with input_cost_per_token)"
    )
    num_retries: int = Field(4, ge=0, description="retries after the first attempt (429 and transient)")
    retry_min_wait: float = Field(5.0, ge=0, description="seconds")
    retry_max_wait: float = Field(30.0, ge=0, description="seconds")
    retry_multiplier: float = Field(2.0, gt=0)
    retry_jitter: float = Field(0.0, ge=0, le=1, description="fraction of the delay added at random")
    timeout: float = Field(120.0, gt=0, description="seconds one provider call may take")
    schema_retries: int = Field(
        2,
        ge=0,
        description="times an answer that does not meet the job's response_format (JSON, its json_schema) "
        "is asked again, with the error, before the job fails as invalid_output",
    )
    default_completion_tokens: int = Field(
        1024, ge=0, description="completion tokens assumed for the limiter when a job sets no max_tokens"
    )
    rpm: float | None = Field(
        None,
        gt=0,
        description="requests/min for every scope jobs of this config run under (each its own bucket)",
    )
    tpm: float | None = Field(
        None,
        gt=0,
        description="tokens/min for every scope jobs of this config run under (each its own bucket)",
    )
    itpm: float | None = Field(
        None, gt=0, description="input tokens/min, as rpm (for providers that limit input and output apart)"
    )
    otpm: float | None = Field(
        None, gt=0, description="output tokens/min, as rpm (for providers that limit input and output apart)"
    )
    limit_scope: str | None = Field(None, description="limiter scope; defaults to the model string")
    allowed_models: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of models a job may name beyond this config's provider "
        "(its credentials go with the call)",
    )
    allowed_params: list[str] = Field(
        default_factory=list, description="job params passed to LiteLLM beyond OpenAI's and provider extras"
    )

    @model_validator(mode="after")
    def _waits_ordered(self) -> LLMConfig:
        if self.retry_min_wait > self.retry_max_wait:
            raise ValueError(
                f"retry_min_wait ({self.retry_min_wait:g}) must not exceed retry_max_wait "
                f"({self.retry_max_wait:g})"
            )
        return self

    @property
    def scope(self) -> str:
        """The limiter scope jobs using this config share."""
        return self.limit_scope or self.model


class LimitConfig(BaseModel):
    """A shared rate limit for one scope (a model string or a deployment name)."""

    model_config = ConfigDict(extra="forbid")

    rpm: float | None = Field(None, gt=0, description="requests per minute")
    tpm: float | None = Field(None, gt=0, description="tokens per minute")
    itpm: float | None = Field(None, gt=0, description="input tokens per minute (Anthropic's ITPM)")
    otpm: float | None = Field(None, gt=0, description="output tokens per minute (Anthropic's OTPM)")
    burst_seconds: float = Field(
        1.0, gt=0, description="bucket capacity, in seconds of the rate: how much may go out at once"
    )
    reserve: float = Field(
        0.1, ge=0, lt=1, description="fraction of the bucket jobs below the default priority may not take"
    )
    spread_seconds: float = Field(
        0.1,
        ge=0,
        description="seconds of the rate every admission leaves in the bucket (at most a quarter of it): "
        "calls reach the provider unevenly, and a bucket run down to empty at both ends sees that as 429s",
    )


# A group's limit scope is its own, and so is what its credentials may be sent to.
NOT_INHERITED = frozenset({"limit_scope", "allowed_models"})


def check_group_keys(name: str, group: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(group) - set(LLMConfig.model_fields))
    if unknown:
        raise ValueError("; ".join(f"[llm.{name}] {key}: unknown key" for key in unknown))
    if isinstance(group.get("api_key"), str):
        group = {**group, "api_key": SecretStr(group["api_key"])}
    return group


def _check_groups(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: check_group_keys(name, group) for name, group in groups.items()}


LLMGroups = Annotated[dict[str, dict[str, Any]], AfterValidator(_check_groups)]
"""``[llm.<name>]`` tables, each checked to set only known ``[llm]`` keys."""
