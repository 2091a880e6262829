"""LiteLLM's settings in every llmqueue module that calls it (``llmqueue.llm.litellm_defaults``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, litellm
before = [litellm.DEFAULT_MAX_RETRIES, litellm.suppress_debug_info]
import {module}
print(json.dumps(before + [litellm.DEFAULT_MAX_RETRIES, litellm.suppress_debug_info]))
"""


@pytest.mark.parametrize("module", ["llmqueue.llm.call", "llmqueue.batches.batch_api"])
def test_importing_a_module_that_calls_litellm_turns_off_its_retries_and_banner(module: str) -> None:
    # In a process of its own: the settings are LiteLLM's, for the whole process.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    before_retries, before_banner, retries, banner_off = json.loads(done.stdout)
    assert (before_retries, before_banner) == (2, False)  # LiteLLM's own defaults
    assert (retries, banner_off) == (0, True)
