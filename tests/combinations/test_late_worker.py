"""A ``run`` whose second worker starts mid-batch (``batches/worker_ramp.py``), over a ``model_list``
alias, embedding lines and default lines under a cost budget: the late worker must serve the same
deployments with the same keys, and every line must reach its provider once."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis import Redis

from llmqueue import keys
from llmqueue.ops.registry import WorkerInfo
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.combinations.runs import RUN_TIMEOUT, clean_env, read_jsonl, write_jsonl

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KEYS = {"main": "sk-late-main-92be", "a": "sk-late-deployment-a-4d17", "b": "sk-late-deployment-b-e0c3"}
LATENCY = 0.5
TRIPLES = 30
"""Each call takes ``LATENCY`` s: with two calls at a time one worker answers ~4 lines a second, so the
90 lines would keep it over 20 s, longer than a second worker takes to start."""


class WorkerWatch:
    """Reads the worker registry while the run goes on: the jobs each worker said it had ended, and how
    many the others had ended when it first appeared."""

    def __init__(self, redis_url: str) -> None:
        self.client = Redis.from_url(redis_url)
        self.ended: dict[str, int] = {}
        self.others_ended_when_seen: dict[str, int] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> WorkerWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.client.close()

    def _watch(self) -> None:
        try:
            while not self.stop.wait(0.2):
                for key in self.client.scan_iter(match=keys.WORKER_PATTERN):
                    data = self.client.hgetall(key)
                    if not data:
                        continue
                    worker = WorkerInfo.from_hash(data)
                    if worker.worker_id not in self.ended:
                        self.others_ended_when_seen[worker.worker_id] = sum(self.ended.values())
                    ended = worker.jobs.succeeded + worker.jobs.failed
                    self.ended[worker.worker_id] = max(ended, self.ended.get(worker.worker_id, 0))
        except BaseException as exc:  # told by the test, not lost with the thread
            self.error = exc


def test_a_worker_started_mid_run_sends_each_line_once_with_its_deployments_keys(
    tmp_path: Path, redis_url: str
) -> None:
    configs = {name: ProviderConfig(api_key=key, latency=LATENCY) for name, key in KEYS.items()}
    lines = []
    for n in range(TRIPLES):
        lines += [
            {
                "custom_id": f"alias{n}",
                "model": "evalmodel",
                "messages": [{"role": "user", "content": f"q{n}"}],
            },
            {"custom_id": f"embed{n}", "input": f"text {n}"},
            {"custom_id": f"default{n}", "messages": [{"role": "user", "content": f"d{n}"}]},
        ]
    source = write_jsonl(tmp_path / "mixed.jsonl", lines)
    output = tmp_path / "out.jsonl"

    with ExitStack() as stack:
        providers = {name: stack.enter_context(ProviderProcess(c)) for name, c in configs.items()}
        config = "".join(
            f'\n[[model_list]]\nmodel_name = "evalmodel"\n[model_list.litellm_params]\n'
            f'model = "openai/sim-model"\napi_base = "{providers[name].base_url}"\n'
            f'api_key = "os.environ/KEY_{name.upper()}"\n'
            "[model_list.model_info]\ninput_cost_per_token = 1e-6\noutput_cost_per_token = 2e-6\n"
            for name in ("a", "b")
        )
        (tmp_path / "config.toml").write_text(config, encoding="utf-8")
        env = clean_env(
            LLM_MODEL="openai/gpt-4o-mini",
            LLM_BASE_URL=providers["main"].base_url,
            LLM_API_KEY=KEYS["main"],
            KEY_A=KEYS["a"],
            KEY_B=KEYS["b"],
            WORKER_MAX_JOBS="2",
            WORKER_RESERVED_SLOTS="0",
            WORKER_HEARTBEAT_INTERVAL="0.3",
        )
        command = [sys.executable, "-m", "llmqueue", "run", str(source), "-o", str(output)]
        command += ["--workers", "2", "--no-cache", "--max-cost", "1", "--redis-url", redis_url]
        with WorkerWatch(redis_url) as watch:
            done = subprocess.run(
                command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT
            )
        seen = {name: process.stats() for name, process in providers.items()}

    assert done.returncode == 0, done.stderr
    records = read_jsonl(output)
    assert [r["custom_id"] for r in records] == [line["custom_id"] for line in lines]
    assert {r["llmqueue"]["status"] for r in records} == {"succeeded"}
    assert watch.error is None, repr(watch.error)
    # Both workers ended jobs; the second came up after the first had ended some (mid-batch, not with
    # it), while lines were waiting, and took some of them.
    assert len(watch.ended) == 2 and all(watch.ended.values()), watch.ended
    assert sorted(watch.others_ended_when_seen.values())[0] == 0, watch.others_ended_when_seen
    assert sorted(watch.others_ended_when_seen.values())[1] > 0, watch.others_ended_when_seen
    assert "workers started: the run ended" not in done.stderr
    # Each line reached its provider once; no key reached an endpoint it was not configured for.
    by_deployment = Counter(r["llmqueue"]["deployment"] for r in records)
    assert seen["a"]["requests"] == by_deployment["evalmodel#0"]
    assert seen["b"]["requests"] == by_deployment["evalmodel#1"]
    assert seen["a"]["requests"] + seen["b"]["requests"] == TRIPLES
    assert seen["main"]["requests"] == 2 * TRIPLES
    assert all(stats["errors"].get("401", 0) == 0 for stats in seen.values()), seen
    embeddings = [r for r in records if r["custom_id"].startswith("embed")]
    assert {r["response"]["body"]["object"] for r in embeddings} == {"list"}
    assert 0 < sum(r["llmqueue"]["cost"] for r in records) <= 1
