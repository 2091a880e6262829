"""Admission through the shared limiter: what a call reserves of a token limit."""

from datetime import UTC, datetime
from typing import Any

from llmqueue.limits.tokens import TokenEstimate
from llmqueue.models import Job
from llmqueue.queue.admission import Admitter
from llmqueue.queue.call import Call
from llmqueue.queue.store import AttemptStart
from llmqueue.settings import LimitConfig, LLMConfig
from tests.support.answered import AnsweredBefore
from tests.support.clock import Clock

LIMIT = LimitConfig(tpm=60_000, burst_seconds=60, spread_seconds=0)
ESTIMATE = TokenEstimate(prompt=100, completion=1024)


def call_of(params: dict[str, Any]) -> Call:
    job = Job(messages=[{"role": "user", "content": "hi"}], params=params)
    start = AttemptStart(has_result=False, failures=[], started_at=datetime.now(UTC))
    return Call(job=job, llm=LLMConfig(), model="m", scope="m", limit=LIMIT, start=start, estimate=ESTIMATE)


class Answer:
    def __init__(self, completion_tokens: int) -> None:
        self.usage = {
            "prompt_tokens": 100,
            "completion_tokens": completion_tokens,
            "total_tokens": 100 + completion_tokens,
        }


async def test_a_job_without_max_tokens_reserves_what_recent_answers_used(fake_redis: Any) -> None:
    admitter = Admitter(
        AnsweredBefore(fake_redis, clock=Clock()), [], max_inline_wait=0, emit=lambda *a, **k: None
    )
    reserved = []
    for completion in (30, 50, 40, 45):
        call = call_of({})
        assert await admitter.admit(call) is None and call.reservation is not None
        reserved.append(call.reservation.taken["t"])
        await admitter.answered(call, Answer(completion))
    # The default (1024) until three answers are in, then the largest of them.
    assert reserved == [1124, 1124, 1124, 150]
    capped = call_of({"max_tokens": 1024})  # a job's own max_tokens is what it may use: reserved whole
    assert await admitter.admit(capped) is None and capped.reservation is not None
    assert capped.reservation.taken["t"] == 1124
