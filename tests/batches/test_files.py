"""Batch file formats: request lines to jobs, results to OpenAI Batch output records. No Redis."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llmqueue.batches.files import (
    RAW_LIMIT,
    BatchFileError,
    LineError,
    check_file,
    iter_jobs,
    job_id_for,
    json_line,
    output_record,
    read_requests,
    rejected_record,
    require_requests,
    write_jsonl,
)
from llmqueue.errors import JobValidationError, LLMQueueError
from llmqueue.models import AttemptError, Job, JobResult, Timings, Usage

MESSAGES = [{"role": "user", "content": "Hi"}]


def line(data: Any) -> str:
    return json.dumps(data) + "\n"


def chat_line(custom_id: str = "req-1", **body: Any) -> str:
    return line(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": MESSAGES, **body},
        }
    )


def read(*lines: str, **options: Any) -> list[Job | LineError]:
    options.setdefault("batch_id", "b1")
    return list(read_requests(lines, **options))


def one_job(*lines: str, **options: Any) -> Job:
    (item,) = read(*lines, **options)
    assert isinstance(item, Job), item
    return item


def one_error(*lines: str, **options: Any) -> LineError:
    items = read(*lines, **options)
    errors = [item for item in items if isinstance(item, LineError)]
    assert len(errors) == 1, items
    return errors[0]


# --- input formats ---


def test_openai_chat_line_becomes_chat_job() -> None:
    job = one_job(chat_line("req-1", model="gpt-4o-mini", max_tokens=5))
    assert job.kind == "chat"
    assert job.model == "gpt-4o-mini"
    assert job.messages == MESSAGES
    assert job.params == {"max_tokens": 5}
    assert job.metadata == {"custom_id": "req-1", "line": 1}
    assert job.batch_id == "b1"
    assert job.id == "b1:00000001"


def test_a_line_asking_to_stream_is_answered_whole_as_the_batch_api_answers_it() -> None:
    job = one_job(chat_line("req-1", stream=True, stream_options={"include_usage": True}, max_tokens=5))
    assert job.params == {"max_tokens": 5}


def test_openai_embeddings_line_becomes_embedding_job() -> None:
    request = {
        "custom_id": "e1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 256},
    }
    job = one_job(line(request))
    assert job.kind == "embedding"
    assert job.input == ["a", "b"]
    assert job.model == "text-embedding-3-small"
    assert job.params == {"dimensions": 256}
    assert job.messages == []


def test_short_form_line_becomes_chat_job() -> None:
    job = one_job(line({"custom_id": "s1", "messages": MESSAGES, "temperature": 0.2}))
    assert job.kind == "chat"
    assert job.messages == MESSAGES
    assert job.params == {"temperature": 0.2}
    assert job.metadata["custom_id"] == "s1"


def test_short_form_with_input_becomes_embedding_job() -> None:
    job = one_job(line({"input": "hello", "encoding_format": "float"}))
    assert job.kind == "embedding"
    assert job.input == "hello"
    assert job.params == {"encoding_format": "float"}


def test_default_model_applies_to_lines_without_a_model() -> None:
    job = one_job(line({"messages": MESSAGES}), default_model="openai/gpt-4o")
    assert job.model == "openai/gpt-4o"


@pytest.mark.parametrize(
    "request_line",
    [
        {"input": "hello"},
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}},
    ],
    ids=["short form", "batch api form"],
)
def test_the_default_model_is_the_chat_model_and_embedding_lines_keep_the_embedding_model(
    request_line: dict[str, Any],
) -> None:
    # --model names the chat model; an embedding line that names none goes to [llm] embedding_model at
    # the worker, not to a chat model.
    job = one_job(line(request_line), default_model="openai/gpt-4o")
    assert job.kind == "embedding"
    assert job.model is None


def test_no_default_model_leaves_model_unset_for_the_worker() -> None:
    assert one_job(line({"messages": MESSAGES})).model is None


def test_explicit_model_is_kept_over_the_default() -> None:
    job = one_job(line({"model": "m-line", "messages": MESSAGES}), default_model="m-default")
    assert job.model == "m-line"


def test_params_pass_through_unchanged() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    params = {"tools": tools, "response_format": {"type": "json_object"}, "temperature": 0, "seed": 7}
    assert one_job(chat_line(**params)).params == params


def test_llm_config_is_set_on_every_job() -> None:
    assert one_job(chat_line(), llm_config="cheap").llm_config == "cheap"


def test_custom_id_defaults_to_line_number() -> None:
    items = read("\n", line({"messages": MESSAGES}))
    (job,) = items
    assert isinstance(job, Job)
    assert job.metadata == {"custom_id": "line-2", "line": 2}


def test_blank_lines_are_skipped_but_counted() -> None:
    items = read("\n", "   \n", chat_line("a"), "\r\n", chat_line("b"))
    assert [item.metadata["line"] for item in items if isinstance(item, Job)] == [3, 5]


def test_leading_byte_order_mark_is_ignored() -> None:
    assert one_job("\ufeff" + chat_line()).metadata["custom_id"] == "req-1"


def test_job_ids_are_deterministic_per_batch_and_line() -> None:
    lines = [chat_line("a"), chat_line("b")]
    first = [item.id for item in read(*lines) if isinstance(item, Job)]
    again = [item.id for item in read(*lines) if isinstance(item, Job)]
    other = [item.id for item in read(*lines, batch_id="b2") if isinstance(item, Job)]
    assert first == again == ["b1:00000001", "b1:00000002"]
    assert other == ["b2:00000001", "b2:00000002"]
    assert job_id_for("b1", 12) == "b1:00000012"


def test_batch_id_that_cannot_form_a_job_id_is_rejected_up_front() -> None:
    with pytest.raises(JobValidationError, match="batch 'my batch'"):
        read_requests([], batch_id="my batch")


def test_empty_default_model_is_rejected_up_front() -> None:
    with pytest.raises(JobValidationError, match="model"):
        read_requests([], batch_id="b1", default_model="")


# --- bad lines ---


def test_invalid_json_is_reported_with_its_line_number() -> None:
    error = one_error(chat_line("a"), "{not json\n", chat_line("b"))
    assert error.line == 2
    assert error.reason.startswith("not valid JSON")
    assert error.raw == "{not json"


def test_json_array_is_not_a_request() -> None:
    error = one_error(line([1, 2]))
    assert (error.line, error.reason) == (1, "expected a JSON object, got an array")


def test_nan_is_not_accepted_as_json() -> None:
    assert "NaN" in one_error('{"messages": [], "temperature": NaN}\n').reason


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"messages": [{"role": "user", "content": "tail \\ud800"}]}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": "low \\uDC00 first"}]}', "messages[0].content"),
        ('{"custom_id": "\\uDBFF", "messages": [{"role": "user", "content": "hi"}]}', "metadata.custom_id"),
    ],
)
def test_a_lone_surrogate_escape_in_a_line_is_rejected_naming_where(text: str, where: str) -> None:
    assert f"{where} holds text that cannot be encoded as UTF-8" in one_error(text + "\n").reason


def test_a_lone_surrogate_in_a_line_given_as_text_is_rejected_naming_where() -> None:
    # Lines handed over as strings may come from a lenient decode (errors="surrogateescape"): the
    # surrogate is then in the text itself, not a JSON escape.
    text = '{"messages": [{"role": "user", "content": "x\udcff"}]}\n'
    assert "messages[0].content holds text that cannot be encoded as UTF-8" in one_error(text).reason


def test_escaped_text_that_is_no_lone_surrogate_is_accepted() -> None:
    escapes = "\\ud83d\\ude00 \\u00e9 \\\\ud800 \\u0041"  # a pair, é, an escaped backslash, A
    text = '{"messages": [{"role": "user", "content": "' + escapes + '"}]}\n'
    assert one_job(text).messages[0]["content"] == "😀 é \\ud800 A"


def test_a_byte_order_mark_after_the_first_line_is_reported_as_the_json_module_words_it() -> None:
    error = one_error(chat_line("a"), "\ufeff" + chat_line("b"))
    assert (error.line, error.reason) == (
        2,
        "not valid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)",
    )


def test_short_form_without_messages_or_input_is_rejected() -> None:
    error = one_error(chat_line("a"), line({"custom_id": "b", "temperature": 1}))
    assert error.line == 2
    assert error.reason.startswith("missing messages")


def test_openai_chat_body_without_messages_is_rejected() -> None:
    request = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    assert one_error(line(request)).reason.startswith("missing messages")


def test_openai_embeddings_body_without_input_is_rejected() -> None:
    request = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}
    assert one_error(line(request)).reason.startswith("missing input")


def test_unknown_url_is_rejected() -> None:
    request = {"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": {"input": "x"}}
    error = one_error(chat_line("z"), line(request))
    assert error.line == 2
    assert "unknown url '/v1/responses'" in error.reason


def test_method_other_than_post_is_rejected() -> None:
    request = {
        "custom_id": "a",
        "method": "GET",
        "url": "/v1/chat/completions",
        "body": {"messages": MESSAGES},
    }
    error = one_error(line(request))
    assert (error.line, error.reason) == (1, "method must be 'POST', got 'GET'")


def test_body_that_is_not_an_object_is_rejected() -> None:
    request = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": "hi"}
    assert one_error(line(request)).reason == "body must be a JSON object, got a string"


def test_unknown_top_level_field_in_openai_form_is_rejected() -> None:
    request = {"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": MESSAGES}, "bdy": 1}
    assert "unknown field(s) bdy" in one_error(line(request)).reason


def test_duplicate_custom_id_is_rejected_on_its_second_line() -> None:
    items = read(chat_line("same"), chat_line("other"), chat_line("same"))
    assert [type(item).__name__ for item in items] == ["Job", "Job", "LineError"]
    error = items[2]
    assert isinstance(error, LineError)
    assert (error.line, error.reason) == (3, "duplicate custom_id 'same'")


def test_explicit_custom_id_colliding_with_a_default_one_is_a_duplicate() -> None:
    error = one_error(line({"messages": MESSAGES}), line({"custom_id": "line-1", "messages": MESSAGES}))
    assert error.line == 2


def test_non_string_custom_id_is_rejected() -> None:
    error = one_error(line({"custom_id": 7, "messages": MESSAGES}))
    assert error.reason == "custom_id must be a string, got a number"


def test_api_key_in_body_is_rejected_by_job_validation() -> None:
    error = one_error(chat_line("a", api_key="sk-secret"))
    assert error.line == 1
    assert error.reason.startswith("invalid job: params: api_key may not be sent")


def test_bad_message_role_is_rejected_by_job_validation() -> None:
    error = one_error(line({"messages": [{"role": "robot", "content": "x"}]}))
    assert "role 'robot'" in error.reason


def test_messages_and_input_together_are_rejected() -> None:
    assert "both messages and input" in one_error(line({"messages": MESSAGES, "input": "x"})).reason


def test_raw_text_of_a_bad_line_is_truncated() -> None:
    error = one_error("x" * 5000 + "\n")
    assert error.raw == "x" * RAW_LIMIT


def test_bad_lines_do_not_stop_later_lines() -> None:
    items = read("nope\n", chat_line("a"), "[]\n", chat_line("b"))
    assert [item.line if isinstance(item, LineError) else item.metadata["line"] for item in items] == [
        1,
        2,
        3,
        4,
    ]


# --- streaming ---


def test_read_requests_consumes_lines_lazily() -> None:
    consumed: list[int] = []

    def lines() -> Iterator[str]:
        for number in range(1, 4):
            consumed.append(number)
            yield chat_line(f"r{number}")
        raise AssertionError("read past the lines that were needed")

    items = read_requests(lines(), batch_id="b1")
    assert consumed == []
    first = next(items)
    assert isinstance(first, Job) and first.metadata["line"] == 1
    assert consumed == [1]
    next(items)
    assert consumed == [1, 2]


# --- files ---


def test_iter_jobs_streams_a_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(chat_line("a") + "\n" + "oops\n" + line({"input": "e"}), encoding="utf-8")
    items = list(iter_jobs(path, batch_id="b1", default_model="m"))
    assert [type(item).__name__ for item in items] == ["Job", "LineError", "Job"]
    assert [item.line if isinstance(item, LineError) else item.id for item in items] == [
        "b1:00000001",
        3,
        "b1:00000004",
    ]


def test_iter_jobs_on_a_missing_file_raises_batch_file_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    with pytest.raises(BatchFileError, match=r"missing\.jsonl: no such file"):
        iter_jobs(path, batch_id="b1")
    assert issubclass(BatchFileError, LLMQueueError)


def test_iter_jobs_on_a_directory_raises_batch_file_error(tmp_path: Path) -> None:
    with pytest.raises(BatchFileError, match="is a directory"):
        iter_jobs(tmp_path, batch_id="b1")


def test_non_utf8_line_raises_batch_file_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(chat_line("a").encode() + '{"messages": "caf\xe9"}\n'.encode("latin-1"))
    items = iter_jobs(path, batch_id="b1")
    assert isinstance(next(items), Job)
    with pytest.raises(BatchFileError, match="line 2 is not UTF-8"):
        next(items)


def test_check_file_counts_lines_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(chat_line("a") + "\n" + "bad\n" + chat_line("a") + chat_line("b"), encoding="utf-8")
    check = check_file(path, batch_id="b1")
    assert (check.lines, check.valid, check.error_count, check.ok) == (4, 2, 2, False)
    assert [error.line for error in check.errors] == [3, 4]


def test_check_file_caps_stored_errors_but_counts_all(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("x\n" * 25, encoding="utf-8")
    check = check_file(path, batch_id="b1", max_errors=10)
    assert (check.error_count, len(check.errors)) == (25, 10)


def test_check_file_of_a_valid_file_is_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(chat_line("a") + chat_line("b"), encoding="utf-8")
    check = check_file(path, batch_id="b1")
    assert check.ok and check.valid == 2 and check.errors == []


def test_check_file_keeps_the_first_job_of_each_kind_model_and_group(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    embedding = line({"custom_id": "e", "input": "text"})
    other = chat_line("c", model="openai/gpt-4o-mini")
    path.write_text(chat_line("a") + chat_line("b") + embedding + other + "bad\n", encoding="utf-8")
    check = check_file(path, batch_id="b1", default_model="openai/sim", llm_config="evals")
    assert {key: job.metadata["line"] for key, job in check.samples.items()} == {
        ("chat", "openai/sim", "evals"): 1,
        ("embedding", None, "evals"): 3,
        ("chat", "openai/gpt-4o-mini", "evals"): 4,
    }


# --- output ---

QUEUED = datetime(2025, 1, 1, tzinfo=UTC)
TIMINGS = Timings(
    queued_at=QUEUED, started_at=QUEUED + timedelta(seconds=1), finished_at=QUEUED + timedelta(seconds=3.5)
)
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
}


def test_output_record_for_a_succeeded_job() -> None:
    result = JobResult(
        job_id="b1:00000001",
        status="succeeded",
        response=CHAT_RESPONSE,
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
        cost=0.0001,
        attempts=2,
        errors=[AttemptError(attempt=1, kind="rate_limit", message="slow down", status_code=429)],
        timings=TIMINGS,
        request_id="req_abc123",
    )
    record = output_record(result, custom_id="req-1", job_id="b1:00000001")
    assert record["id"] == "batch_req_b1:00000001"
    assert record["custom_id"] == "req-1"
    assert record["response"] == {"status_code": 200, "request_id": "req_abc123", "body": CHAT_RESPONSE}
    assert record["llmqueue"]["job_id"] == "b1:00000001"
    assert record["error"] is None
    extra = record["llmqueue"]
    assert extra["status"] == "succeeded"
    assert extra["attempts"] == 2
    assert extra["cost"] == 0.0001
    assert extra["latency_seconds"] == 2.5
    assert extra["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert [error["kind"] for error in extra["errors"]] == ["rate_limit"]
    assert set(record) == {"id", "custom_id", "response", "error", "llmqueue"}


def test_output_record_for_a_job_failed_with_an_http_status() -> None:
    result = JobResult(
        job_id="j1",
        status="failed",
        attempts=1,
        errors=[AttemptError(attempt=1, kind="bad_request", message="max_tokens too large", status_code=400)],
        timings=TIMINGS,
    )
    record = output_record(result, custom_id="c1", job_id="j1")
    # As OpenAI's Batch output has it: an HTTP error is a response, not an error.
    assert record["error"] is None
    assert record["response"]["status_code"] == 400
    assert record["response"]["request_id"] is None  # the provider sent none
    assert record["response"]["body"]["error"]["message"] == "max_tokens too large"
    assert record["llmqueue"]["status"] == "failed"


def test_output_record_keeps_the_providers_error_body_and_request_id() -> None:
    body = {"error": {"message": "bad max_tokens", "type": "invalid_request_error", "param": "max_tokens",
                      "code": "integer_above_max_value"}}  # fmt: skip
    result = JobResult(
        job_id="j1",
        status="failed",
        attempts=1,
        errors=[
            AttemptError(attempt=1, kind="bad_request", message="litellm.BadRequestError: …", status_code=400)
        ],
        timings=TIMINGS,
        error_body=body,
        request_id="req_400",
    )
    record = output_record(result, custom_id="c1", job_id="j1")
    assert record["response"] == {"status_code": 400, "request_id": "req_400", "body": body}
    assert record["error"] is None


def test_output_record_leaves_out_what_litellm_adds_to_a_body() -> None:
    dumped = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop", "provider_specific_fields": {},
                     "message": {"role": "assistant", "content": "hi", "tool_calls": None,
                                 "function_call": None, "provider_specific_fields": None}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                  "completion_tokens_details": None, "prompt_tokens_details": None},
    }  # fmt: skip
    embedding = {
        "object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2,
                  "completion_tokens_details": None, "prompt_tokens_details": None},
    }  # fmt: skip
    chat = JobResult(job_id="j1", status="succeeded", response=dumped, timings=TIMINGS)
    body = output_record(chat, custom_id="c1", job_id="j1")["response"]["body"]
    assert body["choices"] == [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    vectors = JobResult(job_id="j2", status="succeeded", response=embedding, timings=TIMINGS)
    usage = output_record(vectors, custom_id="c2", job_id="j2")["response"]["body"]["usage"]
    assert usage == {"prompt_tokens": 2, "total_tokens": 2}


def test_output_record_for_a_job_failed_without_an_http_response() -> None:
    result = JobResult(
        job_id="j1",
        status="failed",
        attempts=5,
        errors=[AttemptError(attempt=5, kind="timeout", message="timed out after 60s")],
        timings=TIMINGS,
    )
    record = output_record(result, custom_id="c1", job_id="j1")
    assert record["response"] is None
    assert record["error"] == {"code": "timeout", "message": "timed out after 60s"}


def test_output_record_for_a_cancelled_job_uses_the_last_error_kind() -> None:
    result = JobResult(
        job_id="j1",
        status="cancelled",
        errors=[AttemptError(attempt=0, kind="budget_exceeded", message="batch budget of $5 spent")],
        timings=Timings(queued_at=QUEUED),
    )
    record = output_record(result, custom_id="c1", job_id="j1")
    assert record["response"] is None
    assert record["error"] == {"code": "budget_exceeded", "message": "batch budget of $5 spent"}
    assert record["llmqueue"]["status"] == "cancelled"
    assert record["llmqueue"]["latency_seconds"] is None


def test_output_record_for_a_cancelled_job_without_errors_says_cancelled() -> None:
    result = JobResult(job_id="j1", status="cancelled", timings=Timings(queued_at=QUEUED))
    assert output_record(result, custom_id="c1", job_id="j1")["error"]["code"] == "cancelled"


def test_output_record_for_a_missing_result() -> None:
    record = output_record(None, custom_id="c1", job_id="j1")
    assert record["id"] == "batch_req_j1"
    assert record["response"] is None
    assert record["error"]["code"] == "missing"
    assert "j1" in record["error"]["message"]
    assert record["llmqueue"]["status"] == "missing"


def test_rejected_record_has_line_reason_and_raw() -> None:
    error = LineError(line=4, reason="not valid JSON: x", raw="{oops")
    assert rejected_record(error) == {"line": 4, "reason": "not valid JSON: x", "raw": "{oops"}


def test_write_jsonl_writes_one_json_object_per_line() -> None:
    result = JobResult(
        job_id="j1",
        status="failed",
        errors=[AttemptError(attempt=1, kind="server_error", message="boom", status_code=503)],
        timings=TIMINGS,
    )
    records = [
        output_record(result, custom_id="c1", job_id="j1"),
        output_record(None, custom_id="c2", job_id="j2"),
        rejected_record(LineError(line=1, reason="r", raw="é")),
    ]
    out = io.StringIO()
    assert write_jsonl(records, out) == 3
    written = out.getvalue()
    assert written.endswith("\n")
    assert [json.loads(text) for text in written.splitlines()] == records
    assert "é" in written


# ---- priority ------------------------------------------------------------------------------------


def test_lines_take_the_files_priority_unless_they_set_their_own() -> None:
    short = line({"messages": MESSAGES, "model": "anthropic/claude-3-5-haiku", "priority": "interactive"})
    nested = line({**json.loads(chat_line("req-2")), "llmqueue": {"priority": 4}})
    jobs = [item for item in read(chat_line("req-1"), short, nested, priority=1) if isinstance(item, Job)]
    assert [job.priority for job in jobs] == [1, 2, 4]
    assert jobs[1].params == {} and jobs[1].model == "anthropic/claude-3-5-haiku"


def test_batch_lines_default_to_batch_priority() -> None:
    assert one_job(chat_line()).priority == 0


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"priority": "urgent"}, "priority 'urgent' is not one of batch=0, default=1, interactive=2"),
        ({"priority": 10}, "priority 10 is not one of"),
        ({"llmqueue": {"priority": 1}, "priority": 2}, "priority is set twice"),
        ({"llmqueue": {"weight": 2}}, "unknown llmqueue option(s) weight"),
        ({"llmqueue": "fast"}, "llmqueue must be a JSON object, got a string"),
    ],
)
def test_a_bad_line_priority_rejects_the_line(extra: dict[str, Any], reason: str) -> None:
    error = one_error(line({"messages": MESSAGES, **extra}))
    assert reason in error.reason


def test_output_lines_escape_what_splitlines_would_split_on() -> None:
    record = {"text": "a\u2028b\u2029c\x85d\ud800e é 😀"}
    line = json_line(record)
    assert len(line.splitlines()) == 1
    assert "é 😀" in line  # other UTF-8 is kept as is
    assert json.loads(line) == record


def test_a_compressed_file_is_reported_as_compressed(tmp_path: Path) -> None:
    packed = tmp_path / "batch.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"messages": [{"role": "user", "content": "hi"}]}\n'))
    with pytest.raises(BatchFileError, match="gzip-compressed"):
        check_file(packed, batch_id="b")


def test_a_file_without_requests_is_refused(tmp_path: Path) -> None:
    for text in ("", "\n\n", "\ufeff  \n\t\n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(BatchFileError, match="holds no requests"):
            require_requests(path)
    path.write_text('\n{"messages": []}\n', encoding="utf-8")
    require_requests(path)  # a request line, even an invalid one, is for the line check to judge
