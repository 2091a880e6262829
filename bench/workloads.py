"""The jobs the benchmarks send, and the one LiteLLM call each becomes.

llmqueue and every client it is compared with get the same list, so their figures differ only by how
they send it. ``call_kwargs`` builds the keyword arguments with llmqueue's own function, so a bare
``litellm.acompletion`` loop makes exactly the call a worker makes.
"""

from __future__ import annotations

from typing import Any, Literal

from llmqueue.llm.request import call_kwargs as llmqueue_call_kwargs
from llmqueue.models import Job
from llmqueue.settings import LLMConfig

Workload = Literal["chat", "long"]

MODEL = "openai/sim-model"
API_KEY = "sk-bench-simulated"  # the simulated provider is started without a key and takes any
#: Provider-counted prompt tokens of a "long" job (about 4 characters a token, as the provider counts).
LONG_PROMPT_TOKENS = 1000
# Short words: one tokenizer token each and about four characters with the space, so LiteLLM's count
# (the workers' estimate) and the simulated provider's count (what it charges) agree within ~5%.
_TEXT = "the cat sat on a mat and ran far off to see who had won its big red hat but not all day"
_WORDS = _TEXT.split()


def chat_job(index: int) -> dict[str, Any]:
    """A short chat job (about 20 tokens): the request-bound workload."""
    return {"messages": [{"role": "user", "content": f"Question {index}: what is {index} plus {index}?"}]}


def long_job(index: int, prompt_tokens: int = LONG_PROMPT_TOKENS) -> dict[str, Any]:
    """A chat job with a long prompt and no ``max_tokens``: the token-bound workload.

    The workers reserve the prompt plus ``default_completion_tokens`` (1024) and give back what the
    provider's usage shows was not used, so this exercises the estimate-then-reconcile accounting.
    """
    words = (_WORDS[(index + 7 * n) % len(_WORDS)] for n in range(prompt_tokens - 12))
    return {
        "messages": [
            {"role": "system", "content": "You are a careful assistant. Answer briefly."},
            {"role": "user", "content": f"Document {index}: " + " ".join(words)},
        ]
    }


def jobs(workload: Workload, count: int, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` jobs of ``workload``, numbered from ``offset`` (so processes can share out one list)."""
    make = chat_job if workload == "chat" else long_job
    return [make(index) for index in range(offset, offset + count)]


def call_kwargs(job: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The ``litellm.acompletion`` keyword arguments a worker with the benchmark's settings sends."""
    llm = LLMConfig(model=MODEL, base_url=base_url, api_key=API_KEY)
    return llmqueue_call_kwargs(Job.parse(job), llm, supports_caching=False)
