"""The deployments benchmark measures the setup users write: a ``model_list`` alias (a name LiteLLM does
not know) served by two deployments, each with its own endpoint and ``os.environ/`` key."""

from __future__ import annotations

from pathlib import Path

import litellm
import pytest

from bench import deployments
from llmqueue.model_list import resolve
from llmqueue.settings.load import load_settings


def test_the_benchmarks_jobs_name_an_alias_served_by_two_deployments_with_their_own_keys(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(deployments.config_toml("http://eu.test/v1", "http://us.test/v1"), encoding="utf-8")
    model_list = load_settings(config).model_list

    (asked,) = {job["model"] for job in deployments.jobs(3)}
    with pytest.raises(litellm.BadRequestError):  # an alias: only the model_list knows where it goes
        litellm.get_llm_provider(asked)
    assert [d.model_name for d in model_list] == [asked, asked]
    called = {d.name: (d.params["model"], d.params["api_base"], d.params["api_key"])
              for d in resolve(model_list, deployments.KEYS)}  # fmt: skip
    assert called == {
        "eu": ("openai/gpt-4o", "http://eu.test/v1", deployments.KEYS["BENCH_EU_KEY"]),
        "us": ("openai/gpt-4o", "http://us.test/v1", deployments.KEYS["BENCH_US_KEY"]),
    }
