"""What ``llmqueue worker`` loads on its way to its first job: LiteLLM (seconds of CPU in every worker
process), and none of the heavier parts a worker never uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import llmqueue
from tests.support.imports import modules_imported_by

REPO_ROOT = Path(llmqueue.__file__).resolve().parents[1]

#: Each would add tenths of a second to seconds of CPU to every worker's start.
NEVER_ON_THE_START_PATH = (
    "litellm.proxy.proxy_server",  # LiteLLM's proxy server
    "fastapi",
    "uvicorn",
    "tokenizers",  # Hugging Face tokenizers (LiteLLM loads them for the models that need them)
    "huggingface_hub",
    "boto3",
    "botocore",
    "google.auth",
    "opentelemetry",
    "prometheus_client",  # only with --metrics-port
    "llmqueue.simulator",
    "llmqueue.dashboard",
    "llmqueue.batches.batch_api",  # the Batch API tier of `llmqueue run`
)

pytestmark = pytest.mark.slow


def test_a_worker_starts_with_litellm_but_without_its_proxy_tokenizers_cloud_sdks_or_metrics(
    redis_url: str, tmp_path: Path
) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("LLM_", "WORKER_")) and name.upper() != "REDIS_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)

    done, imported = modules_imported_by(
        ["worker", "--burst", "--verbose", "--redis-url", redis_url],
        ["litellm", *NEVER_ON_THE_START_PATH],
        env=env,
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert " started on queue " in done.stderr, done.stderr  # the whole start-up ran, warm-up included
    assert imported == {"litellm"}, done.stderr
