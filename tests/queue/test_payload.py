"""serialization: arq job payloads as compact JSON, deflated when long; anything else becomes an
``invalid`` marker, never an error."""

import json
import pickle
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from llmqueue.models import Job
from llmqueue.queue import payload
from llmqueue.queue.payload import (
    COMPRESS_ABOVE,
    COMPRESSED,
    INVALID_MARKER,
    JOB_FUNCTION,
    arq_job,
    deserialize_job,
    invalid_reason,
    job_argument,
    serialize,
)

JOB = {"id": "job-1", "messages": [{"role": "user", "content": "héllo"}], "params": {"max_tokens": 5}}
# Words that do not repeat in a short window, as a real prompt's: deflate halves it, no more.
WORDS = ["alpha", "beta", "gamma", "delta"] * 60
PROSE = " ".join(f"{word}{n * 7919 % 1009}" for n, word in enumerate(WORDS))


def reason_for(raw: bytes) -> str | None:
    decoded = deserialize_job(raw)
    assert decoded["f"] == JOB_FUNCTION
    assert len(decoded["a"]) == 1
    return invalid_reason(decoded["a"][0])


def arq_payload(**fields: Any) -> bytes:
    payload = {"t": None, "f": JOB_FUNCTION, "a": [JOB], "k": {}, "et": 1}
    payload.update(fields)
    return json.dumps(payload).encode()


def deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(1, zlib.DEFLATED, -15)
    return COMPRESSED + deflater.compress(data) + deflater.flush()


def batch_job(content: str) -> Job:
    return Job.parse(
        {
            "id": "b:00000001",
            "model": "openai/sim-model",
            "messages": [{"role": "user", "content": content}],
            "params": {"max_tokens": 5},
            "metadata": {"custom_id": "req-1", "line": 1},
            "batch_id": "b",
            "priority": 0,
        }
    )


@pytest.mark.parametrize("content", ["héllo", PROSE], ids=["short-plain", "long-compressed"])
def test_arq_job_round_trips_to_the_same_job(content: str) -> None:
    job = batch_job(content)

    decoded = deserialize_job(arq_job(job, enqueue_time_ms=1_700_000_000_123))

    assert decoded["et"] == 1_700_000_000_123
    assert (decoded["t"], decoded["f"], decoded["k"]) == (None, JOB_FUNCTION, {})
    assert Job.parse(decoded["a"][0]) == job


def test_a_short_job_is_stored_as_json_without_its_default_fields() -> None:
    job = Job.parse(JOB)

    raw = arq_job(job, 5)

    assert json.loads(raw)["a"][0] == {**JOB, "created_at": job.created_at.isoformat().replace("+00:00", "Z")}
    assert len(raw) <= COMPRESS_ABOVE


def test_a_long_job_is_stored_deflated_behind_the_marker_and_smaller() -> None:
    job = batch_job(PROSE)
    as_json = job.model_dump_json().encode()

    raw = arq_job(job, 5)

    assert raw.startswith(COMPRESSED)
    assert len(raw) < len(as_json) * 0.6


def test_a_payload_of_an_earlier_version_with_every_field_still_reads() -> None:
    job = batch_job("héllo")
    old = serialize({"t": None, "f": JOB_FUNCTION, "a": [job.model_dump(mode="json")], "k": {}, "et": 7})

    assert Job.parse(job_argument(old)) == job


def test_a_deflated_payload_another_writer_made_reads() -> None:
    job = Job.parse(JOB)

    assert Job.parse(job_argument(deflate(arq_job(job, 5)))) == job


def test_round_tripped_job_is_not_marked_invalid() -> None:
    assert invalid_reason(deserialize_job(arq_job(Job.parse(JOB), 0))["a"][0]) is None


def test_arq_job_is_compact_json() -> None:
    raw = arq_job(Job.parse({**JOB, "created_at": "2026-01-02T03:04:05Z"}), 5)

    assert raw == (
        b'{"t":null,"f":"run_job","a":[{"id":"job-1","messages":[{"role":"user","content":"h\xc3\xa9llo"}],'
        b'"params":{"max_tokens":5},"created_at":"2026-01-02T03:04:05Z"}],"k":{},"et":5}'
    )


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (COMPRESSED, "is cut short"),
        (COMPRESSED + b"\xff\xfe garbage", "does not inflate"),
        (deflate(b'{"t": null, "f": "run_job"')[:-3], "is cut short"),
    ],
    ids=["marker-alone", "garbage", "truncated"],
)
def test_a_broken_compressed_payload_becomes_a_marker_with_a_reason(raw: bytes, why: str) -> None:
    reason = reason_for(raw)

    assert reason is not None
    assert reason.startswith("payload is not JSON (it is marked compressed")
    assert why in reason


def test_a_compressed_payload_that_expands_without_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "MAX_EXPANDED", 1000)

    reason = reason_for(deflate(b" " * 1001))

    assert reason is not None
    assert "expands past 1000 bytes" in reason


def test_a_compressed_payload_of_the_wrong_shape_becomes_a_marker() -> None:
    assert reason_for(deflate(b'{"hello": "world"}')) == "payload is JSON but not an llmqueue job"


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
