"""Structured output, the pure part: formats read from params, answers checked, re-asks worded."""

from __future__ import annotations

from typing import Any

import pytest

from llmqueue.errors import JobValidationError
from llmqueue.llm.structured import (
    OutputFormat,
    OutputProblem,
    answer_problem,
    invalid_output_message,
    output_format,
    reask_messages,
)
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = OutputFormat("json_schema", name="verdict", schema=ANSWER_SCHEMA)
JSON_OBJECT = OutputFormat("json_object")


def schema_param(schema: Any, **extra: Any) -> dict[str, Any]:
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, **extra},
        }
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, JSON_OBJECT),
        (schema_param(ANSWER_SCHEMA), SCHEMA_FORMAT),
        (
            schema_param(ANSWER_SCHEMA, strict=True),
            OutputFormat("json_schema", "verdict", ANSWER_SCHEMA, True),
        ),
    ],
)
def test_output_format_read_from_params(params: dict[str, Any], expected: OutputFormat | None) -> None:
    assert output_format(params) == expected


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"response_format": {"type": "json_schema"}}, "needs json_schema.schema"),
        (schema_param("not a schema"), "needs json_schema.schema"),
        (schema_param({"type": "integr"}), "not a valid JSON Schema"),
    ],
)
def test_a_malformed_json_schema_format_is_refused_naming_the_fault(
    params: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        output_format(params)


NOT_JSON = "the answer is not valid JSON (Expecting value: line 1 column 1)"
BAD_KEY = "the answer is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2)"


@pytest.mark.parametrize(
    ("text", "wanted", "problem"),
    [
        ('{"answer": 42}', SCHEMA_FORMAT, None),
        (
            '{"answer": "forty-two"}',
            SCHEMA_FORMAT,
            OutputProblem("'forty-two' is not of type 'integer'", "$.answer"),
        ),
        ("{}", SCHEMA_FORMAT, OutputProblem("'answer' is a required property", "$")),
        ("forty-two", SCHEMA_FORMAT, OutputProblem(NOT_JSON)),
        (None, SCHEMA_FORMAT, OutputProblem("the answer has no text content; JSON was asked for")),
        ('{"anything": [1]}', JSON_OBJECT, None),
        ("[1, 2]", JSON_OBJECT, OutputProblem("the answer is JSON but not an object (got list)")),
        ("{not json", JSON_OBJECT, OutputProblem(BAD_KEY)),
    ],
)
def test_answer_problem(text: str | None, wanted: OutputFormat, problem: OutputProblem | None) -> None:
    assert answer_problem(text, wanted) == problem


def test_a_property_the_schema_forbids_is_named() -> None:
    problem = answer_problem('{"answer": 1, "extra": 2}', SCHEMA_FORMAT)
    assert problem is not None and "'extra' was unexpected" in problem.message and problem.path == "$"


def test_a_nested_error_is_reported_at_its_json_path() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}}
    problem = answer_problem('{"items": [1, "two"]}', OutputFormat("json_schema", schema=schema))
    assert problem == OutputProblem("'two' is not of type 'integer'", "$.items[1]")


def test_reask_feeds_back_the_answer_then_names_the_error() -> None:
    problem = OutputProblem("'forty-two' is not of type 'integer'", "$.answer")
    assistant, user = reask_messages('{"answer": "forty-two"}', problem, SCHEMA_FORMAT)
    assert assistant == {"role": "assistant", "content": '{"answer": "forty-two"}'}
    assert user["role"] == "user"
    assert "'verdict'" in user["content"]
    assert "at $.answer: 'forty-two' is not of type 'integer'" in user["content"]


def test_the_failure_message_names_the_schema_the_error_and_where() -> None:
    problem = OutputProblem("'forty-two' is not of type 'integer'", "$.answer")
    message = invalid_output_message(problem, SCHEMA_FORMAT, attempts=3)
    assert message == (
        "the answer does not match schema 'verdict' at $.answer: 'forty-two' is not of type 'integer' "
        "(after 3 answer(s))"
    )


def test_a_job_with_a_malformed_json_schema_is_refused_at_submission() -> None:
    with pytest.raises(JobValidationError, match=r"params: response_format json_schema needs"):
        Job.parse({"messages": [{"role": "user", "content": "hi"}], "params": schema_param(None)})


def test_schema_retries_is_a_job_field_and_a_setting() -> None:
    job = Job.parse({"messages": [{"role": "user", "content": "hi"}], "schema_retries": 0})
    assert job.schema_retries == 0
    assert LLMConfig().schema_retries == 2
