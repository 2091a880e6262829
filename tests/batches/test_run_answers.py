"""What ``llmqueue run`` answers from the cache as it submits: only with the keys its workers would use."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmqueue.batches.options import RunOptions, with_workers_llm
from llmqueue.batches.run import _answers_for
from llmqueue.cache import job_cache_key
from llmqueue.models import Job
from llmqueue.settings import CacheConfig
from tests.support.settings import make_settings

JOB = Job.parse({"model": "openai/sim-model", "messages": [{"role": "user", "content": "hi"}]})


def run_options(tmp_path: Path, worker_env: dict[str, str]) -> RunOptions:
    return RunOptions(file=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", worker_env=worker_env)


async def test_keys_are_those_of_the_endpoint_the_workers_are_given(tmp_path: Path) -> None:
    # --simulate-provider gives the workers its endpoint in their environment, not the run's settings.
    settings = make_settings("redis://unused", "https://real.example/v1")
    settings = settings.model_copy(update={"cache": CacheConfig(dir=tmp_path / "answers")})
    simulated = {"LLM_BASE_URL": "http://127.0.0.1:9/v1", "LLM_API_KEY": "sim"}
    producer: Any = SimpleNamespace(redis=None)
    async with _answers_for(settings, run_options(tmp_path, simulated), producer, True) as answers:
        assert answers is not None
        _, workers = answers
    workers_key = job_cache_key(JOB, workers.llm)
    assert workers_key == job_cache_key(JOB, with_workers_llm(settings, simulated).llm)
    assert workers_key != job_cache_key(JOB, settings.llm)  # the real provider's answers are not its


async def test_nothing_is_answered_when_the_workers_get_llm_settings_the_run_cannot_lay_over(
    tmp_path: Path,
) -> None:
    settings = make_settings("redis://unused", "https://real.example/v1")
    producer: Any = SimpleNamespace(redis=None)
    options = run_options(tmp_path, {"LLM_API_VERSION": "2024-10-21"})
    async with _answers_for(settings, options, producer, True) as answers:
        assert answers is None
    async with _answers_for(settings, run_options(tmp_path, {}), producer, False) as answers:
        assert answers is None  # --no-cache
