"""``llmqueue run`` of a file above ``[batch] check_first_bytes``, as the user runs it: checked while its
first lines run, stopped before its first bad line with what it queued kept, and resumed once fixed
with every line sent once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmqueue.ops.local_cluster import run_dir
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.batches.test_run import provider_env, read_jsonl, run, run_env
from tests.support.settings import TEST_API_KEY

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

LINES = 2300
BAD = 2200
"""Past the lines checked before the run begins (HEAD_LINES), and far enough past them that the check
cannot reach it in the moment the run takes to see the head checked: at 200 lines past (1,200), under
a loaded CI the check found the bad line first, and the run refused the file whole before queueing."""


@pytest.fixture
def batch_name() -> str:
    return f"ahead-{time.time_ns()}"


def write_lines(path: Path, *, bad: int | None) -> list[str]:
    """A file whose lines name their own model; line ``bad`` (1-based) is not JSON."""
    ids = []
    with path.open("w", encoding="utf-8") as out:
        for n in range(1, LINES + 1):
            if n == bad:
                out.write('{"custom_id": "broken", "messages": [\n')
                continue
            ids.append(f"line-{n}")
            line = {
                "custom_id": f"line-{n}",
                "model": "openai/sim-model",
                "messages": [{"role": "user", "content": f"q {n}"}],
            }
            out.write(json.dumps(line) + "\n")
    return ids


def test_a_big_file_stops_before_its_first_bad_line_and_resumes_once_fixed_sending_each_line_once(
    tmp_path: Path, batch_name: str
) -> None:
    source = tmp_path / "big.jsonl"
    write_lines(source, bad=BAD)
    output = tmp_path / "out.jsonl"
    config = tmp_path / "llmqueue.toml"
    config.write_text("[batch]\ncheck_first_bytes = 1000\n", encoding="utf-8")
    args = ["-o", str(output), "--workers", "1", "--config", str(config)]
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider), WORKER_POLL_DELAY="0.01")
        code, stderr = run([str(source), "--batch", batch_name, *args], env, tmp_path)
        sent_before = provider.stats()["requests"]

        assert code == 2, stderr
        assert f"line {BAD}:" in stderr, stderr
        assert "checked while its first lines ran: the run stopped before the first bad line" in stderr
        # The resume command carries the run's options, its output first.
        assert f"resume with: llmqueue run --resume {batch_name} --output {output} --workers 1" in stderr
        assert sent_before < BAD  # nothing past the bad line was sent
        assert run_dir(batch_name).exists()  # kept for the resume

        ids = write_lines(source, bad=None)
        code, stderr = run(["--resume", batch_name, str(source), *args], env, tmp_path)
        stats = provider.stats()

    assert code == 0, stderr
    assert [record["custom_id"] for record in read_jsonl(output)] == ids
    assert stats["requests"] == stats["succeeded"] == LINES  # the lines queued before the stop: once
    assert not run_dir(batch_name).exists()


def test_a_bad_line_among_the_first_lines_of_a_big_file_refuses_it_before_anything_is_queued(
    tmp_path: Path, batch_name: str
) -> None:
    source = tmp_path / "big.jsonl"
    write_lines(source, bad=50)
    config = tmp_path / "llmqueue.toml"
    config.write_text("[batch]\ncheck_first_bytes = 1000\n", encoding="utf-8")
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider))
        code, stderr = run(
            [str(source), "-o", str(tmp_path / "o.jsonl"), "--batch", batch_name, "--config", str(config)],
            env,
            tmp_path,
        )
        assert provider.stats()["requests"] == 0

    assert code == 2, stderr
    assert "line 50:" in stderr and "nothing was enqueued" in stderr, stderr
    assert not run_dir(batch_name).exists()


def test_a_model_without_a_price_past_the_first_lines_stops_a_budgeted_run_and_its_resume_too(
    tmp_path: Path, batch_name: str
) -> None:
    source = tmp_path / "big.jsonl"
    write_lines(source, bad=None)
    lines = source.read_text(encoding="utf-8").splitlines()
    lines[BAD - 1] = lines[BAD - 1].replace("openai/sim-model", "openai/sim-unpriced-xyz")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "llmqueue.toml"
    config.write_text("[batch]\ncheck_first_bytes = 1000\n", encoding="utf-8")
    args = ["-o", str(tmp_path / "out.jsonl"), "--workers", "1", "--config", str(config)]
    priced = {"LLM_INPUT_COST_PER_TOKEN": "0.000001", "LLM_OUTPUT_COST_PER_TOKEN": "0.000002"}
    with ProviderProcess(ProviderConfig(api_key=TEST_API_KEY)) as provider:
        env = run_env(**provider_env(provider), **priced, WORKER_POLL_DELAY="0.01")
        code, stderr = run([str(source), "--batch", batch_name, "--max-cost", "50", *args], env, tmp_path)
        sent = provider.stats()["requests"]
        assert code == 2, stderr
        assert "openai/sim-unpriced-xyz" in stderr and "the run stopped" in stderr, stderr
        assert sent < BAD

        # Resumed as told, without --max-cost: the batch's budget still holds, so the line is refused.
        code, stderr = run(["--resume", batch_name, *args], env, tmp_path)
        assert code == 2, stderr
        assert "--max-cost needs a price for every model" in stderr and "openai/sim-unpriced-xyz" in stderr
        assert provider.stats()["requests"] == sent
