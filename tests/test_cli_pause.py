"""``llmqueue pause`` and ``llmqueue resume`` in process, against a real Redis (no worker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmqueue.cli import app
from llmqueue.errors import LLMQueueError
from tests.support.cli import cli, runner

pytestmark = pytest.mark.usefixtures("clean_environment")


def test_pause_then_status_shows_the_batch_paused_and_resume_lets_it_go_on(
    redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"q{n}"}]}) + "\n" for n in range(3))
    )
    cli("submit", str(source), "--batch", "held", "--model", "openai/sim-model", "--redis-url", redis_url)
    assert "batch held paused" in cli("pause", "held", "--redis-url", redis_url).output
    assert json.loads(cli("status", "held", "--json", "--redis-url", redis_url).stdout)["paused"] is True
    assert (
        "paused: no call starts until `llmqueue resume held`"
        in cli("status", "held", "--redis-url", redis_url).stdout
    )
    assert (
        "batch held resumed: 3 queued job(s) go on" in cli("resume", "held", "--redis-url", redis_url).output
    )
    assert json.loads(cli("status", "held", "--json", "--redis-url", redis_url).stdout)["paused"] is False


def test_a_paused_scope_is_listed_by_limits_until_resumed(redis_url: str) -> None:
    cli("pause", "--scope", "openai/gpt-4o", "--redis-url", redis_url)
    shown = json.loads(cli("limits", "--json", "--redis-url", redis_url).stdout)
    assert {"scope": "openai/gpt-4o", "state": "unseen", "paused": True} in shown
    assert "paused (no call starts" in cli("limits", "--redis-url", redis_url).output
    assert (
        "0 held job(s) start now"
        in cli("resume", "--scope", "openai/gpt-4o", "--redis-url", redis_url).output
    )
    assert json.loads(cli("limits", "--json", "--redis-url", redis_url).stdout) == []


def refusal(*args: str) -> str:
    """What the command refuses with (``main()`` prints it and exits 2)."""
    result = runner.invoke(app, list(args))
    assert isinstance(result.exception, LLMQueueError), result.output
    return str(result.exception)


def test_pause_needs_a_batch_or_a_scope_and_refuses_an_unknown_batch(redis_url: str) -> None:
    assert "say what to pause" in refusal("pause", "--redis-url", redis_url)
    assert "say what to resume" in refusal("resume", "b", "--scope", "s", "--redis-url", redis_url)
    assert "no batch named 'nope'" in refusal("pause", "nope", "--redis-url", redis_url)


def test_a_finished_batch_is_not_paused_and_a_batch_not_paused_is_not_resumed(
    redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    cli("submit", str(source), "--batch", "going", "--model", "openai/sim-model", "--redis-url", redis_url)
    assert (
        "batch going is not paused: nothing to resume"
        in cli("resume", "going", "--redis-url", redis_url).output
    )
    cli("cancel", "going", "--redis-url", redis_url)  # its one job ends: the batch is finished
    assert "batch going has finished" in refusal("pause", "going", "--redis-url", redis_url)
    assert json.loads(cli("status", "going", "--json", "--redis-url", redis_url).stdout)["paused"] is False


def test_the_progress_line_of_a_paused_batch_says_paused_not_an_eta() -> None:
    from dataclasses import replace

    from llmqueue.batches.display import progress_detail
    from tests.batches.test_worker_ramp import status

    going = replace(status(total=10, succeeded=4, queued=6), eta_seconds=30.0)
    assert "ETA 30s" in progress_detail(going)
    paused = replace(going, paused=True)  # nothing starts until it is resumed: no time to tell
    assert "paused" in progress_detail(paused) and "ETA" not in progress_detail(paused)
