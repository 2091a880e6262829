"""Job validation (errors name the field) and JobResult's convenience properties."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmqueue.errors import JobValidationError
from llmqueue.models import (
    FORBIDDEN_PARAMS,
    AttemptError,
    Job,
    JobResult,
    Timings,
    Usage,
    replace_lone_surrogates,
)

USER_HI = [{"role": "user", "content": "hi"}]
QUEUED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse_error(data: Any) -> str:
    with pytest.raises(JobValidationError) as excinfo:
        Job.parse(data)
    return str(excinfo.value)


def result(**fields: Any) -> JobResult:
    fields.setdefault("job_id", "job-1")
    fields.setdefault("status", "succeeded")
    fields.setdefault("timings", Timings(queued_at=QUEUED))
    return JobResult(**fields)


def chat_response(content: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


# ---- Job.parse -------------------------------------------------------------------------


def test_parse_accepts_a_minimal_chat_job() -> None:
    job = Job.parse({"messages": USER_HI})

    assert (job.kind, job.messages, job.model, job.params) == ("chat", USER_HI, None, {})


def test_parse_gives_each_job_a_fresh_id() -> None:
    assert Job.parse({"messages": USER_HI}).id != Job.parse({"messages": USER_HI}).id


def test_parse_error_is_a_job_validation_error_not_a_pydantic_error() -> None:
    with pytest.raises(JobValidationError) as excinfo:
        Job.parse({"messages": USER_HI, "kind": "painting"})

    assert type(excinfo.value) is JobValidationError
    assert excinfo.value.__cause__ is None


def test_parse_error_names_a_bad_kind_field() -> None:
    assert "kind:" in parse_error({"messages": USER_HI, "kind": "painting"})


def test_parse_error_names_an_unknown_field() -> None:
    assert "temprature: unknown field" in parse_error({"messages": USER_HI, "temprature": 0.3})


def test_parse_error_names_every_bad_field() -> None:
    message = parse_error({"messages": USER_HI, "kind": "painting", "metadata": "not a dict"})

    assert "kind:" in message
    assert "metadata:" in message


@pytest.mark.parametrize("param", sorted(FORBIDDEN_PARAMS))
def test_credential_params_are_rejected(param: str) -> None:
    message = parse_error({"messages": USER_HI, "params": {param: "value"}})

    assert f"params: {param}" in message


def test_api_key_in_params_is_rejected_with_a_hint_at_worker_settings() -> None:
    message = parse_error({"messages": USER_HI, "params": {"api_key": "sk-x"}})

    assert "LLM_API_KEY" in message


def test_base_url_in_params_is_rejected() -> None:
    assert "base_url may not be sent in a job" in parse_error(
        {"messages": USER_HI, "params": {"base_url": "http://x"}}
    )


def test_ordinary_params_are_accepted() -> None:
    params = {"max_tokens": 10, "temperature": 0.0, "tools": []}

    assert Job.parse({"messages": USER_HI, "params": params}).params == params


def test_bad_role_names_the_message_and_the_role() -> None:
    message = parse_error({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})

    assert "messages:" in message
    assert "message 1 has role 'robot'" in message


def test_message_without_content_or_tool_calls_is_rejected() -> None:
    assert "message 0 has no content" in parse_error({"messages": [{"role": "user"}]})


def test_assistant_message_with_tool_calls_and_no_content_is_accepted() -> None:
    messages = [*USER_HI, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}]

    assert Job.parse({"messages": messages}).messages == messages


@pytest.mark.parametrize("data", [{}, {"messages": []}])
def test_chat_job_without_messages_is_rejected(data: dict[str, Any]) -> None:
    assert "a chat job needs at least one message" in parse_error(data)


@pytest.mark.parametrize(
    "data", [{"kind": "embedding"}, {"kind": "embedding", "input": ""}, {"kind": "embedding", "input": []}]
)
def test_embedding_job_without_input_is_rejected(data: dict[str, Any]) -> None:
    assert "an embedding job needs input" in parse_error(data)


@pytest.mark.parametrize("text_input", ["one text", ["a", "b"]])
def test_embedding_job_with_input_needs_no_messages(text_input: str | list[str]) -> None:
    assert Job.parse({"kind": "embedding", "input": text_input}).input == text_input


@pytest.mark.parametrize("job_id", ["job-1", "batch.42:row_7", "user@example/a-b", "x" * 200])
def test_job_ids_matching_the_pattern_are_accepted(job_id: str) -> None:
    assert Job.parse({"id": job_id, "messages": USER_HI}).id == job_id


@pytest.mark.parametrize("job_id", ["", "has space", "semi;colon", "star*", "new\nline", "x" * 201])
def test_job_ids_outside_the_pattern_are_rejected(job_id: str) -> None:
    assert "id:" in parse_error({"id": job_id, "messages": USER_HI})


def test_empty_model_is_rejected() -> None:
    assert "model:" in parse_error({"model": "", "messages": USER_HI})


def test_non_mapping_input_is_a_job_validation_error() -> None:
    assert parse_error(["not", "a", "job"]).startswith("invalid job:")


def test_job_round_trips_through_json_mode_dump() -> None:
    job = Job(
        id="rt-1",
        model="openai/sim",
        llm_config="cheap",
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
        ],
        params={"max_tokens": 5, "temperature": 0.5},
        metadata={"row": 3},
        batch_id="b-1",
        reply_to="inbox:1",
    )

    assert Job.parse(job.model_dump(mode="json")) == job


def test_embedding_job_round_trips_through_json_mode_dump() -> None:
    job = Job(kind="embedding", input=["a", "b"])

    assert Job.parse(job.model_dump(mode="json")) == job


# ---- JobResult -----------------------------------------------------------------------------------


def test_text_is_the_first_choices_message_content() -> None:
    response = chat_response("first")
    response["choices"].append({"index": 1, "message": {"role": "assistant", "content": "second"}})

    assert result(response=response).text == "first"


@pytest.mark.parametrize(
    "response",
    [
        None,
        {},
        {"choices": []},
        {"choices": [{"message": None}]},
        chat_response(None),
        chat_response([{"type": "text"}]),
    ],
    ids=["no-response", "empty", "no-choices", "no-message", "null-content", "list-content"],
)
def test_text_is_none_without_string_content(response: dict[str, Any] | None) -> None:
    assert result(response=response).text is None


def test_ok_is_true_only_for_succeeded() -> None:
    assert [result(status=s).ok for s in ("succeeded", "failed", "cancelled")] == [True, False, False]


def test_error_is_the_last_attempt_error_of_a_failed_job() -> None:
    errors = [
        AttemptError(attempt=1, kind="rate_limit", message="429", retry_in=5.0),
        AttemptError(attempt=2, kind="auth", message="401"),
    ]

    assert result(status="failed", errors=errors).error == errors[-1]


def test_error_is_none_for_a_succeeded_job_that_had_failed_attempts() -> None:
    errors = [AttemptError(attempt=1, kind="timeout", message="slow")]

    assert result(status="succeeded", errors=errors).error is None


def test_error_is_none_for_a_failed_job_without_recorded_errors() -> None:
    assert result(status="failed").error is None


def test_run_seconds_is_the_time_from_start_to_finish() -> None:
    timings = Timings(queued_at=QUEUED, started_at=QUEUED, finished_at=QUEUED + timedelta(seconds=2.5))

    assert timings.run_seconds == 2.5


def test_run_seconds_is_none_when_the_job_never_started() -> None:
    assert Timings(queued_at=QUEUED).run_seconds is None


def test_result_round_trips_through_json_mode_dump() -> None:
    original = result(
        batch_id="b-1",
        status="failed",
        model="openai/sim",
        response=chat_response("hello"),
        usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        cost=0.0012,
        attempts=2,
        errors=[AttemptError(attempt=1, kind="rate_limit", message="429", status_code=429, retry_in=5.0)],
        timings=Timings(queued_at=QUEUED, started_at=QUEUED + timedelta(seconds=1)),
        worker_id="w-1",
        metadata={"row": 1},
    )

    assert JobResult.model_validate(original.model_dump(mode="json")) == original


def test_priority_accepts_names_and_integers_and_defaults_to_default() -> None:
    assert Job.parse({"messages": USER_HI}).priority == 1  # a payload from before priorities
    assert [
        Job.parse({"messages": USER_HI, "priority": p}).priority for p in ("batch", "INTERACTIVE", 9, "3")
    ] == [
        0,
        2,
        9,
        3,
    ]


@pytest.mark.parametrize("bad", [-1, 10, "high", True, 1.5])
def test_priority_outside_names_and_0_to_9_is_rejected(bad: Any) -> None:
    assert "priority: priority" in parse_error({"messages": USER_HI, "priority": bad})


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"messages": [{"role": "user", "content": "tail \ud800"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "messages[0].content[0].text",
        ),
        ({"kind": "embedding", "input": ["fine", "bad \ud800"]}, "input[1]"),
        ({"params": {"stop": ["\ud800"]}}, "params.stop[0]"),
        ({"metadata": {"key \ud800": "value"}}, "metadata (a key)"),
    ],
)
def test_text_that_utf8_cannot_encode_is_refused_naming_where(fields: dict[str, Any], where: str) -> None:
    data = {"messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(JobValidationError, match="cannot be encoded as UTF-8") as refused:
        Job.parse(data)
    assert where in str(refused.value)


def test_a_surrogate_pair_and_unusual_unicode_are_fine() -> None:
    job = Job.parse({"messages": [{"role": "user", "content": "😀 \u2028 مرحبا \x00 \uffff"}]})
    assert job.messages[0]["content"].startswith("😀")
    assert replace_lone_surrogates({"a": ["x\ud800", "\ud83d\ude00"]}) == {"a": ["x\ufffd", "😀"]}
