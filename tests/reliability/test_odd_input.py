"""A randomized run of odd input: every job ends with exactly one result.

A seeded generator makes jobs of unusual Unicode (lone surrogates, line separators, RTL, combining marks,
zero-width and control characters, astral planes), sizes (empty to 200,000 characters) and shapes
(content parts, embeddings, params a job may not set, models of other providers, invalid messages), and
scripts the simulated provider to answer some calls with broken bodies, 5xx, 429 and 400. The jobs go
straight into Redis, as any producer could put them, and two worker processes run them. Then each job
must have one result (stored once: its done list holds one token), nothing may be left queued, and a
batch of such lines must come back as one output record per line, however the file is split into lines.

``LLMQUEUE_ODD_SEED`` replays one seed; the seed in use is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.batches.files import check_file, write_results
from llmqueue.llm.policy import submission_refusal
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import wait_for_results, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

QUEUE = "llmqueue:queue"
JOBS = 120
SEED = int(os.environ.get("LLMQUEUE_ODD_SEED", "20261201"))

UNENCODABLE = ["half \ud800 pair", "low \udfff first"]
ODD_TEXTS = [
    "",
    " ",
    "مرحبا بالعالم",
    "שלום עולם",
    "e\u0301" * 40,
    "\u200b\u200c\u200d\ufeff",
    "👩\u200d👩\u200d👧\u200d👦",
    "one\u2028two\u2029three\x85four",
    "nul\x00bell\x07esc\x1b",
    "\uffff\ufffe noncharacters",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀",  # noqa: RUF001 (look-alike letters on purpose)
    "crlf\r\nline",
    '{"choices": []}',
    "\\ud800 escaped in text",
]
MODELS = [None, "openai/sim-model", "openai/sim-other"]
FOREIGN_MODELS = ["ollama_chat/llama3", "anthropic/claude-3-haiku"]
PARAMS = [{}, {"temperature": 0.3}, {"max_tokens": 5}, {"top_k": 3, "seed": 7}]
RISKY_PARAMS = [
    {"mock_response": "fake"},
    {"custom_llm_provider": "ollama"},
    {"extra_headers": {"X-Odd": "1"}},
]
RARE = 0.06  # how often a job gets each kind of content it may not have
ANSWERS = [
    ("broken_next", {"shape": "empty_choices"}),
    ("broken_next", {"shape": "no_choices"}),
    ("broken_next", {"shape": "no_message"}),
    ("broken_next", {"shape": "truncated"}),
    ("broken_next", {"shape": "html"}),
    ("broken_next", {"shape": "empty"}),
    ("broken_next", {"shape": "lone_surrogate"}),
    ("fail_next", {"status": 500}),
    ("fail_next", {"status": 429, "retry_after": 0}),
    ("fail_next", {"status": 400, "message": "odd request"}),
]


def odd_text(rng: random.Random) -> str:
    parts = [rng.choice(UNENCODABLE if rng.random() < RARE else ODD_TEXTS) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.08:
        parts.append("x" * rng.choice([10_000, 200_000]))
    return "".join(parts)


def odd_job(rng: random.Random, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = {"id": job_id}
    shape = rng.choice(["chat", "chat", "chat", "parts", "system", "embedding", "embedding-list"])
    if rng.random() < RARE:
        shape = "invalid"
    if shape == "chat":
        job["messages"] = [{"role": "user", "content": odd_text(rng)}]
    elif shape == "parts":
        job["messages"] = [{"role": "user", "content": [{"type": "text", "text": odd_text(rng)}]}]
    elif shape == "system":
        job["messages"] = [
            {"role": "system", "content": odd_text(rng)},
            {"role": "user", "content": odd_text(rng)},
        ]
    elif shape == "embedding":
        job |= {"kind": "embedding", "input": odd_text(rng) or "empty", "model": "openai/sim-embedding"}
    elif shape == "embedding-list":
        job |= {
            "kind": "embedding",
            "input": [odd_text(rng) or "e" for _ in range(3)],
            "model": "openai/sim-embedding",
        }
    else:
        job["messages"] = rng.choice([[], [{"role": "robot", "content": "hi"}], [{"role": "user"}], "text"])
    if not job.get("model") and shape != "invalid":
        model = rng.choice(FOREIGN_MODELS if rng.random() < RARE else MODELS)
        if model is not None:
            job["model"] = model
    job["params"] = dict(rng.choice(RISKY_PARAMS if rng.random() < RARE else PARAMS))
    if rng.random() < 0.2:
        job["metadata"] = {odd_text(rng)[:20]: odd_text(rng)[:50]}
    return job


def _arq(job: dict[str, Any]) -> bytes:
    return json.dumps({"t": 1, "f": "run_job", "a": [job], "k": {}, "et": int(time.time() * 1000)}).encode()


async def test_odd_jobs_and_odd_answers_each_end_with_exactly_one_result(
    redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    jobs = [odd_job(rng, f"odd-{n}") for n in range(JOBS)]
    answers = [rng.choice(ANSWERS) for _ in range(JOBS // 3)]
    lines = [
        {
            "custom_id": f"line-{n}",
            **{k: v for k, v in odd_job(rng, "unused").items() if k in ("messages", "model")},
        }
        for n in range(30)
    ]
    lines = [line for line in lines if isinstance(line.get("messages"), list)]
    batch_file = tmp_path / "odd.jsonl"
    batch_file.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")

    config = ProviderConfig(api_key=TEST_API_KEY, latency=0.02, error_rate=0.05, seed=SEED)
    with ProviderProcess(config) as provider:
        for action, fields in answers:
            provider.control(action, count=1, **fields)
        env = worker_env(
            redis_url,
            provider.base_url,
            TEST_API_KEY,
            llm_num_retries=2,
            llm_retry_min_wait=0.1,
            llm_retry_max_wait=0.5,
            llm_retry_multiplier=0.1,
            worker_max_jobs=20,
        )
        async with Producer(make_settings(redis_url, provider.base_url)) as producer:
            redis = producer.redis
            for job in jobs:
                await redis.set(keys.arq_job(job["id"]), _arq(job))
            await redis.zadd(QUEUE, {job["id"]: int(time.time() * 1000) for job in jobs})
            check = check_file(
                batch_file,
                batch_id="odd-batch",
                refuse=lambda job: submission_refusal(job, producer.settings),
            )
            batches = Batches(producer.store, producer.settings)
            report = await batches.submit_file(batch_file, "odd-batch", skip_invalid=True)
            with worker_processes(env, tmp_path) as workers:
                await workers.start_ready(2)
                began = time.monotonic()
                results = await wait_for_results(redis, [job["id"] for job in jobs], 180)
                status = await asyncio.wait_for(batches.wait("odd-batch", interval=0.2), 120)
                took = time.monotonic() - began
                await asyncio.sleep(1)  # anything stored twice would show by now
                alive = len(workers.alive)
            done_tokens = [await redis.llen(keys.done(job["id"])) for job in jobs]
            left_queued = await redis.zcard(QUEUE)
            left_payloads = [job["id"] for job in jobs if await redis.exists(keys.arq_job(job["id"]))]
            output = tmp_path / "out.jsonl"
            await write_results(batches.results("odd-batch"), output)
        stats = provider.stats()

    outcomes: dict[str, int] = {}
    for result in results.values():
        label = result.status if result.error is None else f"{result.status}:{result.error.kind}"
        outcomes[label] = outcomes.get(label, 0) + 1
    print(
        f"\nodd input, seed {SEED}: {JOBS} jobs in {took:.1f} s → {dict(sorted(outcomes.items()))}; "
        f"batch of {check.lines} lines: {check.error_count} refused at submission, {status.total} run; "
        f"provider calls {stats['requests']} ({stats['broken']} broken bodies)"
    )
    internal = [r.error.message for r in results.values() if r.error and r.error.kind == "internal_error"]
    assert internal == []  # every failure has its own kind: none escaped the runner's own handling
    assert alive == 2
    assert done_tokens == [1] * JOBS  # one result each, stored once
    assert left_queued == 0 and left_payloads == []
    for job in jobs:
        result = results[job["id"]]
        assert result.status in ("succeeded", "failed"), (job, result)
        if result.ok:
            body = result.response or {}
            assert body.get("choices") or body.get("data"), (job["id"], body)
        else:
            assert result.error is not None and result.error.message, (job["id"], result)
    assert stats["requests"] <= JOBS * 3
    assert status.done and status.finished == status.total == report.submitted == check.valid
    text = output.read_text(encoding="utf-8")
    assert len(text.splitlines()) == status.total  # one record per line, whichever way lines are split
    assert len(text.split("\n")) == status.total + 1
