"""llmqueue runs on every arq of its declared range: jobs end to end on the oldest and the newest.

The worker uses only arq's public pieces (its pool and settings, key prefixes, ``Retry``, and for
``arq llmqueue.worker.WorkerSettings`` its ``Worker`` with a job function). Each version is installed
aside (``pip install --target`` into pytest's cache, once) and put first on ``sys.path`` of a child
process that runs ``tests.support.arq_version_check``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llmqueue.simulator.server import RunningProvider

ROOT = Path(__file__).resolve().parents[1]
OLDEST = "0.26.1"
"""The oldest arq of the range: 0.26.0 declares redis<5, and before 0.26 ``RedisSettings`` cannot
carry the command retries the worker sets."""
NEWEST = "0.28.0"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_the_declared_range_is_the_tested_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (arq,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "arq"]
    assert arq.specifier.contains(OLDEST) and arq.specifier.contains(NEWEST)
    assert {s.operator for s in arq.specifier} == {">=", "<"}  # a range, not one version
    assert [s.version for s in arq.specifier if s.operator == ">="] == [OLDEST]


def arq_installed_aside(version: str, cache: pytest.Cache) -> Path:
    target = cache.mkdir(f"arq-{version}")
    if f"VERSION = '{version}'" not in _text(target / "arq" / "version.py"):
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade"]
        subprocess.run(
            [*pip, "--target", target, f"arq=={version}"],
            check=True,
            capture_output=True,
        )
    return target


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
async def test_jobs_run_end_to_end_on_arq(
    version: str, redis_url: str, provider: RunningProvider, request: pytest.FixtureRequest
) -> None:
    target = await asyncio.to_thread(arq_installed_aside, version, request.config.cache)
    provider.fail_next(1, 429, retry_after=0.1)  # one job goes back through arq's Retry
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "WORKER_", "REDIS_"))},
        "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]),
    }
    # Not subprocess.run: the provider answers from this event loop, which must keep running.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.arq_version_check",
        version,
        redis_url,
        provider.base_url,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0, err.decode()[-3000:]
    outcome = json.loads(out.decode().splitlines()[-1])
    assert outcome.pop("arq") == outcome.pop("expected") == version
    assert {job: status for job, (status, _) in outcome.items()} == {
        "loop-by-arq": "succeeded",
        "loop-by-producer": "succeeded",
        "arq_worker-by-arq": "succeeded",
        "arq_worker-by-producer": "succeeded",
    }
    assert sum(attempts for _, attempts in outcome.values()) == 5  # four answers and the one 429
