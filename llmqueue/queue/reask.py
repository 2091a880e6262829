"""Asking again until the answer meets the job's ``response_format`` (structured output, in the worker).

The first answer is checked (:func:`llmqueue.llm.structured.answer_problem`); one that falls short is
asked again with the answer and the error appended to the conversation, up to ``schema_retries`` times.
Each re-ask is a provider call under the budgets (``may_reask``: a batch's ``max_cost`` and the
spending limits; without room for it the job ends with the answers it has) and admitted by the limiter
like the first (``Admitter.admit``: it may wait in place, or re-defer the job with arq's ``Retry``,
which then starts over); the answer before it is reported to the limiter first. A provider error on a
re-ask propagates to the runner, which handles it as it handles the first call's. An answer that never
met the format ends the job as ``invalid_output`` (:func:`invalid_output`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from llmqueue.errors import PermanentProviderError
from llmqueue.llm.answers import missing_answer
from llmqueue.llm.as_sent import request_id_of_response
from llmqueue.llm.call import call_provider
from llmqueue.llm.response import response_cost, response_dict, response_usage
from llmqueue.llm.structured import (
    INVALID_OUTPUT,
    OutputFormat,
    OutputProblem,
    answer_problem,
    invalid_output_message,
    output_format,
    reask_messages,
)
from llmqueue.models import AttemptError, JobResult, Usage
from llmqueue.queue import results
from llmqueue.queue.admission import Admitter
from llmqueue.queue.call import Call

AfterResult = Callable[[Coroutine[Any, Any, None]], None]
MayReask = Callable[[float, int], Awaitable[str | None]]
"""Given what the answers so far cost (USD) and used (tokens), why a re-ask may not be made (a budget),
or None."""


@dataclass
class Checked:
    """The outcome of a job's answers checked against its format ``wanted``: ``answers`` in order (the
    first call's first), ``problem`` the last answer's (None: it meets the format), or ``refused`` when
    the limiter could never admit a re-ask (larger than a minute's limit)."""

    wanted: OutputFormat
    answers: list[Any] = field(default_factory=list)
    problem: OutputProblem | None = None
    refused: PermanentProviderError | None = None

    @property
    def last(self) -> Any:
        return self.answers[-1]

    @property
    def met(self) -> bool:
        """Whether the last answer meets the format (and no re-ask was refused)."""
        return self.refused is None and self.problem is None


def answer_text(response: Any) -> str | None:
    """The first choice's message content of a LiteLLM response (or its dict)."""
    data = response.model_dump() if hasattr(response, "model_dump") else response
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices:
        return None
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else None


async def until_valid(
    call: Call,
    kwargs: dict[str, Any],
    response: Any,
    *,
    admitter: Admitter,
    after_result: AfterResult,
    timeout: float,
    may_reask: MayReask | None = None,
) -> Checked | None:
    """Check ``response`` against the job's ``response_format`` and ask again, at most its
    ``schema_retries`` times, until an answer meets it; None for a job with no format, or an answer
    with nothing to check. Provider errors of a re-ask propagate (``call.reservation`` is then the
    re-ask's)."""
    job = call.job
    wanted = output_format(job.params) if job.kind == "chat" else None
    if wanted is None or missing_answer(job.kind, response) is not None:
        return None
    retries = call.llm.schema_retries if job.schema_retries is None else job.schema_retries
    checked = Checked(wanted, answers=[response])
    checked.problem = answer_problem(answer_text(response), wanted)
    messages = list(kwargs["messages"])
    while checked.problem is not None and len(checked.answers) <= retries:
        after_result(admitter.answered(call, checked.last))
        messages += reask_messages(answer_text(checked.last), checked.problem, wanted)
        paid = sum(cost for cost in map(response_cost, checked.answers) if cost is not None)
        used = sum(usage.total_tokens for usage in map(response_usage, checked.answers) if usage is not None)
        over_budget = None if may_reask is None else await may_reask(paid, used)
        if over_budget is not None:
            checked.refused = PermanentProviderError(over_budget, kind="budget_exceeded")
            return checked
        refused = await admitter.admit(call)
        if refused is not None:
            checked.refused = refused
            return checked
        # A re-ask is answered whole, even for a streamed job: its stream holds the first answer.
        asked = {**kwargs, "messages": messages, "stream": False}
        answer = await call_provider(call.job.kind, asked, timeout=timeout)
        checked.answers.append(answer)
        checked.problem = answer_problem(answer_text(answer), wanted)
    return checked


def count_reasks(result: JobResult, checked: Checked) -> None:
    """Add the re-asks to ``result`` (built from the last answer): attempts, and tokens and cost summed
    over every answer."""
    result.attempts += len(checked.answers) - 1
    usages = [u for u in map(response_usage, checked.answers) if u is not None]
    if usages:
        result.usage = Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
            total_tokens=sum(u.total_tokens for u in usages),
        )
    costs = [c for c in map(response_cost, checked.answers) if c is not None]
    result.cost = sum(costs) if costs else None


def invalid_output(call: Call, checked: Checked, *, worker_id: str) -> JobResult:
    """The failed result of a job no answer of which met its format (``invalid_output``), or whose
    re-ask the limiter refused outright (the refusal's kind): every answer's tokens and cost counted,
    the last answer kept."""
    if checked.refused is not None:
        kind, message = checked.refused.kind, checked.refused.message
    else:
        assert checked.problem is not None
        kind = INVALID_OUTPUT
        message = invalid_output_message(checked.problem, checked.wanted, len(checked.answers))
    attempts = call.attempt + len(checked.answers) - 1
    result = results.failed(
        call, AttemptError(attempt=attempts, kind=kind, message=message), worker_id=worker_id
    )
    result.response = response_dict(checked.last)
    result.request_id = request_id_of_response(checked.last)
    count_reasks(result, checked)
    return result
