"""Jobs and results: pydantic models that travel through Redis as JSON."""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmqueue.errors import JobValidationError
from llmqueue.llm.structured import output_format

# Parameters that would carry credentials or re-route the call: a worker takes these from its own settings.
FORBIDDEN_PARAMS = frozenset(
    {"api_key", "api_base", "base_url", "azure_ad_token", "aws_secret_access_key", "aws_access_key_id"}
)
MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer"})

JobKind = Literal["chat", "embedding"]

PRIORITIES = {"batch": 0, "default": 1, "interactive": 2}
"""Named priorities; any integer from 0 to 9 works too, and a higher number runs first."""
MAX_PRIORITY = 9


def parse_priority(value: object) -> int:
    """A priority from a name (``batch``, ``default``, ``interactive``) or an integer 0-9.

    Raises ValueError naming the accepted values otherwise.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in PRIORITIES:
            return PRIORITIES[text]
        if text.isdigit():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PRIORITY:
        return value
    names = ", ".join(f"{name}={number}" for name, number in PRIORITIES.items())
    raise ValueError(f"priority {value!r} is not one of {names} or an integer 0-{MAX_PRIORITY}")


ResultStatus = Literal["succeeded", "failed", "cancelled"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


_TEXT_IS_UTF8 = "text_is_utf8"
_UTF8_CONTEXT = {_TEXT_IS_UTF8: True}


def new_job_id() -> str:
    """A random 128-bit id in hex (``os.urandom`` directly: uuid4 costs more per job)."""
    return os.urandom(16).hex()


class Job(BaseModel):
    """One LLM call to make: a chat completion, or an embedding (``kind="embedding"``).

    ``model`` names a LiteLLM model string; without it the job uses the model of its ``llm_config``
    group (or of ``[llm]``). ``params`` go to LiteLLM as they are (max_tokens, temperature, tools,
    response_format …), except credentials, which never travel in a job.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_job_id, min_length=1, max_length=200, pattern=r"^[\w.:@/-]+$")
    kind: JobKind = "chat"
    model: str | None = Field(None, min_length=1)
    llm_config: str | None = Field(None, min_length=1)
    messages: list[dict[str, Any]] = Field(default_factory=list)
    input: str | list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    batch_id: str | None = None
    cache: bool = Field(
        False,
        description="answer from the response cache when an identical request was answered before, "
        "and keep this answer for the next (batch lines set it unless --no-cache)",
    )
    priority: int = Field(
        PRIORITIES["default"],
        description="0-9, higher first; names batch=0, default=1, interactive=2 are accepted",
    )
    schema_retries: int | None = Field(
        None,
        ge=0,
        description="times an answer that does not meet response_format is asked again (None: the "
        "worker's schema_retries)",
    )
    created_at: datetime = Field(default_factory=_utcnow)
    reply_to: str | None = Field(None, description="internal: the producer inbox notified on completion")

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_named_or_number(cls, value: Any) -> int:
        return parse_priority(value)

    @field_validator("messages")
    @classmethod
    def _messages_well_formed(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(messages):
            role = message.get("role")
            if not isinstance(role, str) or role not in MESSAGE_ROLES:  # a list or dict is unhashable
                raise ValueError(
                    f"message {index} has role {role!r}; expected one of {sorted(MESSAGE_ROLES)}"
                )
            if "content" not in message and "tool_calls" not in message:
                raise ValueError(f"message {index} has no content")
        return messages

    @field_validator("params")
    @classmethod
    def _no_credentials(cls, params: dict[str, Any]) -> dict[str, Any]:
        forbidden = sorted(FORBIDDEN_PARAMS.intersection(params))
        if forbidden:
            raise ValueError(
                f"{', '.join(forbidden)} may not be sent in a job: workers take credentials and endpoints "
                "from their own settings (LLM_API_KEY, LLM_BASE_URL)"
            )
        output_format(params)  # a response_format asking for JSON must say which, readably
        return params

    @model_validator(mode="after")
    def _text_is_encodable(self, info: ValidationInfo) -> Job:
        # A lone surrogate ("\ud800" in JSON) is valid JSON but no provider can be sent it as UTF-8.
        if info.context is not None and info.context.get(_TEXT_IS_UTF8):
            return self
        for name in ("messages", "input", "params", "metadata"):
            where = first_unencodable(getattr(self, name))
            if where is not None:
                raise ValueError(
                    f"{name}{where} holds text that cannot be encoded as UTF-8 (a lone surrogate such as "
                    "\\ud800): no provider can be sent it"
                )
        return self

    @model_validator(mode="after")
    def _has_input(self) -> Job:
        if self.kind == "chat" and not self.messages:
            raise ValueError("a chat job needs at least one message")
        if self.kind == "embedding" and not self.input:
            raise ValueError("an embedding job needs input")
        return self

    @classmethod
    def parse(cls, data: Any, *, text_is_utf8: bool = False) -> Job:
        """Validate ``data`` into a job, raising JobValidationError that names each bad field.

        ``text_is_utf8``: the caller knows that no string in ``data`` holds a lone surrogate (it was
        decoded from UTF-8 with no ``\\uD800``-``\\uDFFF`` escape), so the search for one is skipped.
        """
        try:
            return cls.model_validate(data, context=_UTF8_CONTEXT if text_is_utf8 else None)
        except ValidationError as exc:
            raise JobValidationError(describe_validation_error(exc)) from None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AttemptError(BaseModel):
    """Why one attempt failed."""

    attempt: int
    kind: str
    message: str
    status_code: int | None = None
    retry_in: float | None = Field(None, description="seconds until the next attempt, if one was made")
    at: datetime = Field(default_factory=_utcnow)


class Timings(BaseModel):
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime = Field(default_factory=_utcnow)

    @property
    def run_seconds(self) -> float | None:
        """Seconds from the first start to the end."""
        if self.started_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class JobResult(BaseModel):
    """The final outcome of a job: one per job, stored in Redis for ``result_ttl`` seconds."""

    job_id: str
    batch_id: str | None = None
    status: ResultStatus
    model: str | None = None
    deployment: str | None = Field(
        None, description="the model_list deployment that answered (its name, never its key)"
    )
    response: dict[str, Any] | None = Field(None, description="the OpenAI-shaped response body")
    error_body: Any = Field(
        None, description="for a job an HTTP error ended: the provider's error body as sent (JSON or text)"
    )
    request_id: str | None = Field(
        None, description="the provider's request id (x-request-id) of the answer that ended the job"
    )
    usage: Usage | None = None
    cost: float | None = Field(None, description="USD, from LiteLLM's price table; None when unknown")
    attempts: int = Field(0, description="provider calls made")
    cached: bool = Field(False, description="answered from the response cache, without a provider call")
    via: Literal["live", "batch-api"] = Field(
        "live", description="live calls (and answers from the response cache), or the provider's Batch API"
    )
    errors: list[AttemptError] = Field(default_factory=list)
    timings: Timings
    worker_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    request: dict[str, Any] | None = Field(
        None, description="the job as submitted, kept on failed and cancelled results so they can be retried"
    )
    parsed: Any = Field(
        None,
        exclude=True,
        description="for a job submitted here with a JSON response_format, the valid answer: an instance "
        "of the pydantic model given as response_format, or the decoded JSON (not stored in Redis)",
    )

    @classmethod
    def from_cache(cls, job: Job, model: str, response: dict[str, Any]) -> JobResult:
        """A job answered by the response cache, before any provider call: it cost nothing. Marked the
        same whichever tier the batch runs in (``cached``, ``via`` its default)."""
        now = _utcnow()
        return cls(
            job_id=job.id,
            batch_id=job.batch_id,
            status="succeeded",
            model=model,
            response=response,
            cost=0.0,
            cached=True,
            timings=Timings(queued_at=job.created_at, started_at=now, finished_at=now),
            metadata=job.metadata,
        )

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def error(self) -> AttemptError | None:
        """The error that ended the job, if it failed."""
        return self.errors[-1] if self.errors and not self.ok else None

    @property
    def text(self) -> str | None:
        """The first choice's message content, for chat jobs that succeeded."""
        if not self.response:
            return None
        choices = self.response.get("choices") or []
        if not choices:
            return None
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None


def first_unencodable(value: Any, path: str = "") -> str | None:
    """Where in ``value`` (a JSON-like structure) a string holds a lone surrogate, e.g. ``[0].content``;
    None when all its text can be encoded as UTF-8."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = first_unencodable(key, f"{path} (a key)")
            if found is None:
                found = first_unencodable(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = first_unencodable(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings replaced by U+FFFD (keys included)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [replace_lone_surrogates(item) for item in value]
    return value


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "job"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{field}: {str(message).removeprefix('Value error, ')}")
    return "invalid job: " + "; ".join(parts)


def __getattr__(name: str) -> Any:
    # ``CompletionJob`` was this class's name before it also carried embeddings.
    if name == "CompletionJob":
        warnings.warn("CompletionJob is now llmqueue.Job", DeprecationWarning, stacklevel=2)
        return Job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
