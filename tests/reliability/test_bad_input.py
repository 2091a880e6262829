"""Scenario 6: malformed jobs written straight into Redis, and fuzzing of the job and config parsers."""

from __future__ import annotations

import json
import os
import pickle
import string
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmqueue import keys
from llmqueue.errors import ConfigError, JobValidationError
from llmqueue.models import Job
from llmqueue.producer import Producer
from llmqueue.queue.payload import COMPRESSED, MAX_EXPANDED
from llmqueue.settings import LLMConfig, Settings, WorkerConfig, load_settings
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import chat_jobs, wait_for_results, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = pytest.mark.timeout(180)

QUEUE = "llmqueue:queue"
FIVE_MB = 5 * 1024 * 1024


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a file appears if anything unpickles the payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _pickled_job(path: Path) -> bytes:
    """What arq's default (pickle) serializer would read as a job, with a file-creating argument."""
    return pickle.dumps({"t": 1, "f": "run_job", "a": [_CreatesFile(path)], "k": {}, "et": 0})


def _deflated(data: bytes) -> bytes:
    return COMPRESSED + zlib.compress(data, 9, wbits=-zlib.MAX_WBITS)


def _arq(job: Any, function: str = "run_job") -> bytes:
    return json.dumps({"t": 1, "f": function, "a": [job], "k": {}, "et": 0}).encode()


async def test_malformed_payloads_end_as_failed_results_and_the_worker_keeps_going(
    redis_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled-marker"
    check = tmp_path / "proof-the-payload-is-live"
    pickle.loads(_pickled_job(check)).get("a")[0].close()  # what unpickling it would do
    assert check.exists()
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    payloads: dict[str, tuple[bytes, str]] = {
        "garbage": (b"\x80\x04\x95garbage\xff\xfe\x00", "payload is not JSON"),
        "pickle": (_pickled_job(marker), "payload is not JSON"),
        "huge-garbage": (os.urandom(FIVE_MB), "payload is not JSON"),
        "deep-nesting": (b"[" * 100_000, "payload is not JSON"),
        "compressed-garbage": (COMPRESSED + b"\xff\xfe garbage", "marked compressed, but does not inflate"),
        "compressed-bomb": (_deflated(b" " * (MAX_EXPANDED + 1)), "marked compressed, but expands past"),
        "compressed-pickle": (_deflated(_pickled_job(marker)), "payload is not JSON"),
        "json-object": (b'{"hello": "world"}', "payload is JSON but not an llmqueue job"),
        "json-list": (b"[1, 2, 3]", "payload is JSON but not an llmqueue job"),
        "other-function": (_arq("touch /tmp/x", "os.system"), "payload names function 'os.system'"),
        "bad-messages": (_arq({"id": "bad-messages", "messages": "nope"}), "invalid job: messages"),
        "credentials": (
            _arq({"id": "credentials", **chat, "params": {"api_base": "http://evil.example"}}),
            "may not be sent in a job",
        ),
        "unhashable-role": (_arq({"id": "unhashable-role", "messages": [{"role": []}]}), "has role []"),
        "unknown-group": (_arq({"id": "unknown-group", **chat, "llm_config": "nope"}), "unknown llm_config"),
        "id-mismatch": (_arq({"id": "someone-else", **chat}), "does not match"),
    }
    huge_message = {"id": "huge-message", "messages": [{"role": "user", "content": "x" * FIVE_MB}]}

    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = worker_env(redis_url, provider.base_url, TEST_API_KEY)
        with worker_processes(env, tmp_path) as workers:
            (worker,) = await workers.start_ready(1)
            async with Producer(make_settings(redis_url, provider.base_url)) as producer:
                redis = producer.redis
                score = int(time.time() * 1000)
                for job_id, (payload, _) in [*payloads.items(), ("huge-message", (_arq(huge_message), ""))]:
                    await redis.set(keys.arq_job(job_id), payload)
                    await redis.zadd(QUEUE, {job_id: score})
                began = time.monotonic()
                results = await wait_for_results(redis, [*payloads, "huge-message"], 60)
                took = time.monotonic() - began
                after = await (await producer.submit(chat_jobs(1, "after")[0])).result(timeout=30)
                spoofed = await redis.exists(keys.result("someone-else"))
            assert worker.alive
        requests = provider.stats()["requests"]

    for job_id, (_, reason) in payloads.items():
        result = results[job_id]
        assert result.status == "failed" and result.attempts == 0, job_id
        assert result.error is not None and result.error.kind == "invalid_job", job_id
        assert reason in result.error.message, (job_id, result.error.message)
    huge = results["huge-message"]
    print(
        f"\nbad input: {len(payloads)} malformed payloads → {len(payloads)} failed results in {took:.1f} s, "
        f"e.g. {results['pickle'].error.message!r}; pickle marker file created: {marker.exists()}; a 5 MB "
        f"message: {huge.status} ({huge.error.message if huge.error else ''!r}); next job {after.status}; "
        f"provider requests {requests}"
    )
    assert not marker.exists()
    assert not spoofed
    assert huge.status in ("succeeded", "failed")  # the simulated provider refuses bodies over 1 MB
    assert after.ok
    assert requests == 2  # the 5 MB message and the good job: nothing else reached the provider


# ---- fuzzing -------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_job_keys = st.sampled_from([*Job.model_fields, "role", "content", "api_key"]) | st.text(max_size=8)
_messages = st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "name"]), _json, max_size=3)
    | st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]), "content": _json}),
    max_size=3,
)
_near_valid_jobs = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": _json})
        )
    },
    optional={
        "id": st.from_regex(r"[\w.:@/-]{1,20}", fullmatch=True) | st.text(max_size=5),
        "kind": st.sampled_from(["chat", "embedding", "image"]),
        "input": _json,
        "model": _json,
        "params": st.dictionaries(st.sampled_from(["max_tokens", "temperature", "api_key", "tools"]), _json),
        "metadata": _json,
        "created_at": st.datetimes().map(str) | _json,
    },
)
_jobs = _near_valid_jobs | st.dictionaries(_job_keys, _json | _messages, max_size=6) | _json


@settings(max_examples=400, deadline=None)
@given(_jobs)
def test_job_parser_accepts_or_raises_job_validation_error(data: Any) -> None:
    try:
        job = Job.parse(data)
    except JobValidationError as exc:
        assert str(exc).startswith("invalid job: ")
    else:
        assert job.id and (job.messages or job.input)


_SECTIONS = ["llm", "worker", "batch", "llm.fast", 'limits."m"', "limits", "llm.fast.deeper", "nope"]
_KEYS = sorted({*LLMConfig.model_fields, *WorkerConfig.model_fields, *Settings.model_fields, "rpm", "x"})
_bare_key = st.sampled_from(_KEYS) | st.text(string.ascii_letters + "_-", min_size=1, max_size=8)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


_scalar = st.integers(-(2**70), 2**70) | st.floats() | st.booleans() | st.text(max_size=12)
_toml_line = st.one_of(
    st.sampled_from(_SECTIONS).map(lambda s: f"[{s}]"),
    st.tuples(_bare_key, _scalar | st.lists(_scalar, max_size=3)).map(
        lambda kv: f"{kv[0]} = {_toml_value(kv[1])}"
    ),
    st.text(max_size=30),  # noise
)
_toml_text = st.lists(_toml_line, max_size=12).map("\n".join)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No LLM_/WORKER_/REDIS_URL variables, and a scratch directory for config files."""
    for name in list(os.environ):
        if name.startswith(("LLM_", "WORKER_", "LLMQUEUE_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def _load_or_config_error(path: Path, **overrides: Any) -> None:
    try:
        loaded = load_settings(path, **overrides)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(loaded, Settings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_toml_text)
def test_config_parser_on_random_toml_text_loads_or_raises_config_error(
    clean_environment: Path, text: str
) -> None:
    path = clean_environment / "config.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load_or_config_error(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_config_parser_on_random_bytes_loads_or_raises_config_error(
    clean_environment: Path, raw: bytes
) -> None:
    path = clean_environment / "config.toml"
    path.write_bytes(raw)
    _load_or_config_error(path)


_sections = st.fixed_dictionaries(
    {},
    optional={
        "llm": st.dictionaries(
            st.sampled_from(sorted(LLMConfig.model_fields)) | _bare_key, _json, max_size=4
        ),
        "worker": st.dictionaries(st.sampled_from(sorted(WorkerConfig.model_fields)), _json, max_size=4),
        "limits": st.dictionaries(
            st.text(max_size=6), st.dictionaries(_bare_key, _json, max_size=3), max_size=2
        ),
        "llm_groups": st.dictionaries(
            st.text(max_size=6), st.dictionaries(_bare_key, _json, max_size=3), max_size=2
        ),
        "batch": _json,
        "redis_url": _json,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_sections | st.dictionaries(_bare_key, _json, max_size=3))
def test_settings_from_random_dicts_load_or_raise_config_error(
    clean_environment: Path, overrides: dict[str, Any]
) -> None:
    path = clean_environment / "empty.toml"
    path.write_text("")
    _load_or_config_error(path, **overrides)
