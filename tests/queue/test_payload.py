"""serialization: arq job payloads as JSON; anything else becomes an ``invalid`` marker, never an error."""

import json
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from llmqueue.queue.payload import (
    INVALID_MARKER,
    JOB_FUNCTION,
    arq_job,
    deserialize_job,
    invalid_reason,
    serialize,
)

JOB = {"id": "job-1", "messages": [{"role": "user", "content": "héllo"}], "params": {"max_tokens": 5}}


def reason_for(raw: bytes) -> str | None:
    decoded = deserialize_job(raw)
    assert decoded["f"] == JOB_FUNCTION
    assert len(decoded["a"]) == 1
    return invalid_reason(decoded["a"][0])


def arq_payload(**fields: Any) -> bytes:
    payload = {"t": None, "f": JOB_FUNCTION, "a": [JOB], "k": {}, "et": 1}
    payload.update(fields)
    return json.dumps(payload).encode()


def test_arq_job_round_trips_through_deserialize_job() -> None:
    decoded = deserialize_job(arq_job(JOB, enqueue_time_ms=1_700_000_000_123))

    assert decoded == {"t": None, "f": JOB_FUNCTION, "a": [JOB], "k": {}, "et": 1_700_000_000_123}


def test_round_tripped_job_is_not_marked_invalid() -> None:
    assert invalid_reason(deserialize_job(arq_job(JOB, 0))["a"][0]) is None


def test_arq_job_is_compact_json() -> None:
    raw = arq_job({"a": 1}, 5)

    assert raw == b'{"t":null,"f":"run_job","a":[{"a":1}],"k":{},"et":5}'


def test_serialize_writes_non_json_values_as_their_str() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

    assert json.loads(serialize({"when": when})) == {"when": str(when)}


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe\x00garbage", b"not json at all", b'{"t": null, "f": "run_job"'],
    ids=["empty", "binary", "text", "truncated"],
)
def test_garbage_bytes_become_a_marker_with_a_reason(raw: bytes) -> None:
    reason = reason_for(raw)

    assert reason is not None
    assert reason.startswith("payload is not JSON")


def test_pickle_payload_is_never_unpickled_and_becomes_a_marker() -> None:
    raw = pickle.dumps({"t": None, "f": JOB_FUNCTION, "a": [JOB], "k": {}, "et": 1})

    reason = reason_for(raw)

    assert reason is not None
    assert reason.startswith("payload is not JSON")


@pytest.mark.parametrize(
    "data",
    [
        [1, 2, 3],
        "a string",
        42,
        None,
        {"f": JOB_FUNCTION, "a": [JOB]},
        {"t": None, "f": JOB_FUNCTION, "a": [JOB], "k": {}},
    ],
    ids=["list", "string", "number", "null", "missing-fields", "missing-et"],
)
def test_json_of_the_wrong_shape_becomes_a_marker(data: Any) -> None:
    assert reason_for(json.dumps(data).encode()) == "payload is JSON but not an llmqueue job"


def test_wrong_function_name_becomes_a_marker_naming_it() -> None:
    reason = reason_for(arq_payload(f="send_email"))

    assert reason is not None
    assert "'send_email'" in reason


@pytest.mark.parametrize("args", [[], [JOB, JOB], {"job": JOB}, "job"], ids=["none", "two", "dict", "string"])
def test_unexpected_arguments_become_a_marker(args: Any) -> None:
    reason = reason_for(arq_payload(a=args))

    assert reason is not None
    assert "unexpected arguments" in reason


def test_deeply_nested_json_becomes_a_marker_instead_of_raising() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000

    assert reason_for(raw) is not None


def test_is_invalid_is_none_for_an_ordinary_job_dict() -> None:
    assert invalid_reason(JOB) is None


@pytest.mark.parametrize("arg", [None, "text", [INVALID_MARKER], 3])
def test_is_invalid_is_none_for_non_dict_arguments(arg: Any) -> None:
    assert invalid_reason(arg) is None


def test_is_invalid_returns_the_markers_reason() -> None:
    assert invalid_reason({INVALID_MARKER: "because"}) == "because"
