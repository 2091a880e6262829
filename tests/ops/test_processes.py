"""The environment a worker process starts with."""

import pytest

from llmqueue.ops.processes import worker_environment


def test_a_worker_that_does_not_inherit_settings_sees_none_of_this_processs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "LLM_MODEL",
        "WORKER_MAX_JOBS",
        "BATCH_WINDOW",
        "CACHE_DIR",
        "LLM_BUDGET_DAILY",
        "REDIS_URL",
    ):
        monkeypatch.setenv(name, "from-the-parent")
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", "2")
    monkeypatch.setenv("HOME_OF_SOMETHING_ELSE", "kept")
    env = worker_environment({"LLM_MODEL": "given"}, inherit_settings=False)
    assert env["LLM_MODEL"] == "given" and env["HOME_OF_SOMETHING_ELSE"] == "kept"
    leaked = {k for k in env if k.startswith(("WORKER_", "BATCH_", "CACHE_", "LLM_BUDGET_", "REDIS_"))}
    assert leaked == set()
    inherited = worker_environment({}, inherit_settings=True)
    assert inherited["CACHE_DIR"] == "from-the-parent" and inherited["REDIS_WAIT_REPLICAS"] == "2"
