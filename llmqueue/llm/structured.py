"""Structured output: what a job's ``response_format`` asks of the answer, whether an answer meets it,
and the messages that ask again when it does not. Pure: no I/O, no LiteLLM.

A ``response_format`` of OpenAI's ``{"type": "json_schema", "json_schema": {"name", "schema",
"strict"?}}`` asks for JSON valid against ``schema`` (checked with ``jsonschema``, the draft the schema
names, else 2020-12); ``{"type": "json_object"}`` asks for any JSON object. An answer that falls short
is asked again as instructor does: the assistant's answer, then a user message naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

INVALID_OUTPUT = "invalid_output"
"""The failure kind of a job whose answer never met its ``response_format``."""


@dataclass(frozen=True)
class OutputFormat:
    """What a job's answer must be: any JSON object (``json_object``), or JSON valid against ``schema``."""

    type: Literal["json_schema", "json_object"]
    name: str = "response"
    schema: Mapping[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class OutputProblem:
    """Why an answer does not meet its format: ``message``, at ``path`` (a JSON path, ``$`` the root)."""

    message: str
    path: str = "$"

    def describe(self) -> str:
        """One line naming the problem and where it is, e.g. ``at $.answer: 'forty-two' is not of type
        'integer'``."""
        return f"at {self.path}: {self.message}"


def output_format(params: Mapping[str, Any]) -> OutputFormat | None:
    """The format a job's ``params`` ask of the answer; None for text (no ``response_format``, or
    ``{"type": "text"}``). Raises ValueError for a ``response_format`` that asks for JSON but is malformed
    (no schema object, a schema that is not a valid JSON Schema)."""
    wanted = params.get("response_format")
    if not isinstance(wanted, Mapping):
        return None
    kind = wanted.get("type")
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind != "json_schema":
        return None
    spec = wanted.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise ValueError("response_format json_schema needs json_schema.schema, a JSON Schema object")
    import jsonschema  # imported when JSON is asked for: ~50 ms that plain jobs do not pay

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"response_format's schema is not a valid JSON Schema: {exc.message}") from None
    assert isinstance(spec, Mapping)
    name = spec.get("name")
    return OutputFormat(
        "json_schema",
        name=name if isinstance(name, str) and name else "response",
        schema=schema,
        strict=bool(spec.get("strict")),
    )


def response_format_of(model: type[Any]) -> dict[str, Any]:
    """The ``response_format`` that asks for JSON valid as ``model`` (a pydantic model class): the
    strict json_schema LiteLLM (and the OpenAI SDK) make of it, named for the class."""
    from litellm.llms.base_llm.base_utils import type_to_response_format_param  # only for a class

    converted = type_to_response_format_param(model)
    assert converted is not None
    return dict(converted)


def parse_answer(text: str | None, model: type[Any] | None) -> Any:
    """A valid answer as the caller asked for it: an instance of ``model`` (a pydantic model class), or
    the decoded JSON without one; None when there is no text."""
    if text is None:
        return None
    if model is not None:
        return model.model_validate_json(text)
    return json.loads(text)


def answer_problem(text: str | None, wanted: OutputFormat) -> OutputProblem | None:
    """What is wrong with the answer ``text`` for ``wanted``; None when it meets it.

    Not JSON at all is reported at ``$`` with the decoder's message; a schema violation names the
    most relevant error (jsonschema's ``best_match``) at its JSON path.
    """
    if text is None:
        return OutputProblem("the answer has no text content; JSON was asked for")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return OutputProblem(
            f"the answer is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
        )
    if wanted.type == "json_object" or wanted.schema is None:
        if not isinstance(value, dict):
            return OutputProblem(f"the answer is JSON but not an object (got {type(value).__name__})")
        return None
    import jsonschema
    from jsonschema.exceptions import best_match

    validator = jsonschema.validators.validator_for(wanted.schema)(wanted.schema)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    return OutputProblem(error.message, error.json_path)


def reask_messages(answer: str | None, problem: OutputProblem, wanted: OutputFormat) -> list[dict[str, Any]]:
    """The two messages added to the conversation to ask again: the assistant's answer as it came, then
    a user message naming what is wrong and where."""
    target = f"the JSON schema {wanted.name!r}" if wanted.type == "json_schema" else "a JSON object"
    return [
        {"role": "assistant", "content": answer or ""},
        {
            "role": "user",
            "content": (
                f"Your answer does not match {target}: {problem.describe()}. "
                "Answer again with JSON only, corrected."
            ),
        },
    ]


def invalid_output_message(problem: OutputProblem, wanted: OutputFormat, attempts: int) -> str:
    """What a job's result says when no answer met its format after ``attempts`` provider calls."""
    target = f"schema {wanted.name!r}" if wanted.type == "json_schema" else "json_object"
    return f"the answer does not match {target} {problem.describe()} (after {attempts} answer(s))"
