"""One job on its way to the provider: what the runner works out before calling, and what admission adds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmqueue.limits.limiter import DEFAULT_PRIORITY, Reservation
from llmqueue.limits.routing import Candidate
from llmqueue.limits.tokens import TokenEstimate
from llmqueue.models import Job
from llmqueue.queue.store import AttemptStart
from llmqueue.settings import LimitConfig, LLMConfig

if TYPE_CHECKING:
    from llmqueue.queue.spending import SpendReservation


@dataclass
class Call:
    """One job on its way to the provider: what the runner worked out before calling.

    For a job routed over deployments, ``candidates`` lists them and admission picks ``deployment``
    (whose name is then the ``scope``); otherwise the scope is the model's own.
    """

    job: Job
    llm: LLMConfig
    model: str
    scope: str
    limit: LimitConfig | None
    start: AttemptStart
    estimate: TokenEstimate
    cache_key: str | None = None
    """Set when this call's answer goes to the response cache (the job asked, and missed)."""
    priority: int = DEFAULT_PRIORITY
    reservation: Reservation | None = None
    """What admission took from the limiter for this call."""
    candidates: list[Candidate] = field(default_factory=list)
    deployment: Candidate | None = None
    cost: float | None = None
    """What the provider's answers to this call cost (USD), once they are in."""
    price: float | None = None
    """The estimated USD of one request of the call, where a budget or spending limit applies and the
    model has a known price (its re-asks are priced the same)."""
    reserved: float = 0.0
    """USD of its batch's budget the call holds: the first request's price and its re-asks'."""
    reserved_tokens: int = 0
    """Tokens of its batch's ``max_tokens`` the call holds: its first request's estimate."""
    spend_reasks: list[SpendReservation] = field(default_factory=list)
    """What its re-asks reserved of the spending limits (the first request's is the runner's)."""

    @property
    def attempt(self) -> int:
        """This call's number among the job's provider calls (1 for the first)."""
        return len(self.start.failures) + 1

    @property
    def attempt_of_model(self) -> int:
        """This call's number among the calls to its current model (a fallback's retries start afresh)."""
        return self.attempt - self.start.fallback_after

    @property
    def deployment_name(self) -> str | None:
        return self.deployment.scope if self.deployment else None


class Emit(Protocol):
    """Records one step of a call as a job event (``name``: an ``EventName``; details: ``JobEvent``'s)."""

    def __call__(self, name: Any, call: Call, **details: Any) -> None: ...
