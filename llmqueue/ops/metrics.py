"""Prometheus metrics for a worker, fed by the runner's job events.

:class:`WorkerMetrics` is an event sink: pass it to ``create_worker(settings, sinks=[..., metrics])``
and serve it with :meth:`WorkerMetrics.serve` (``llmqueue worker --metrics-port 9100``). ``model`` is
the LiteLLM model string a job used (empty for a job that could not be parsed); ``priority`` is the
job's priority, 0-9 (empty for a job that could not be parsed); ``reason`` is the error
kind (``rate_limit``, ``timeout``, ``server_error``, ``auth`` …). Counters count this worker process's
events since it started; Prometheus sums them across workers.

- ``llmqueue_jobs_started_total{model,priority}``: provider calls started (every attempt)
- ``llmqueue_jobs_succeeded_total{model,priority}``: jobs that ended succeeded
- ``llmqueue_jobs_failed_total{model,priority,reason}``: jobs that ended failed (retries spent, a
  permanent error, or ``invalid_job``)
- ``llmqueue_jobs_retried_total{model,priority,reason}``: failed calls sent back to the queue to try again
- ``llmqueue_jobs_deferred_total{model,priority,reason}``: jobs sent back by the limiter (``limiter``),
  a 429 cooldown (``cooldown``) or a paused scope (``paused``); not attempts
- ``llmqueue_jobs_cancelled_total{reason}``: jobs of a cancelled or over-budget batch
- ``llmqueue_jobs_interrupted_total{model}``: calls cut off by a worker stop (they run again)
- ``llmqueue_rate_limited_total{model}``: provider answers with HTTP 429
- ``llmqueue_limiter_wait_seconds{model,priority,where}`` (histogram): limiter waits, ``inline`` (in a worker
  slot) or ``deferred`` (the delay back in the queue)
- ``llmqueue_call_duration_seconds{model}`` (histogram): provider call latency, answered or failed
- ``llmqueue_tokens_total{model,kind}``: tokens the provider reported, ``prompt`` or ``completion``
- ``llmqueue_cost_usd_total{model}``: LiteLLM's price of the successful calls, in USD
- ``llmqueue_in_flight{model}`` (gauge): provider calls running in this worker now
- ``llmqueue_deployment_calls_total{model,deployment,outcome}``: calls of jobs routed over a model_list,
  per deployment, by how they ended (``ok``, ``rerouted``, or the error kind: ``rate_limit`` …)
- ``llmqueue_limit{scope,kind,source}`` (gauge): the rate a scope runs under, per minute (``kind``
  ``requests`` or ``tokens``, and ``input_tokens``/``output_tokens`` where the provider limits them apart;
  ``source`` ``configured``, ``learnt``, ``both`` or ``none``; 0: none)
- ``llmqueue_limit_level{scope,kind}`` (gauge): what the scope's shared bucket holds now
- ``llmqueue_spend_usd{period,model}`` (gauge): what the UTC ``day`` or ``month`` has spent so far under a
  spending limit (``[budget]``), for one model or ``*`` (all models), as of this worker's last call
- ``llmqueue_spend_limit_usd{period,model}`` (gauge): that spending limit
- ``llmqueue_spend_warning{period,model}`` (gauge): 1 once the spend passed ``warn_at`` (80%) of its limit
  (jobs held by a limit count in ``llmqueue_jobs_deferred_total{reason="spending_limit"}``)

The limit gauges are refreshed from Redis at most every 5 s per scope, after a provider answer.

The registry also holds the usual ``process_*`` and ``python_*`` series of the worker process.
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from llmqueue.limits.view import ScopeState
from llmqueue.ops.events import JobEvent

LIMIT_KINDS = ("requests", "tokens", "input_tokens", "output_tokens")


def _limit_kinds(state: ScopeState) -> list[tuple[str, float, float]]:
    """(kind, rate, level) of a scope's buckets: requests and tokens, and input and output tokens where
    the scope has those limits."""
    kinds = [("requests", state.rpm, state.request_level), ("tokens", state.tpm, state.token_level)]
    if state.itpm:
        kinds.append(("input_tokens", state.itpm, state.input_level))
    if state.otpm:
        kinds.append(("output_tokens", state.otpm, state.output_level))
    return kinds


__all__ = ["WorkerMetrics"]

# Limiter waits run from milliseconds (an inline wait) to minutes (a long re-defer).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_BY_PRIORITY = ("model", "priority")
_CALL_ENDS = frozenset({"succeeded", "failed", "retrying", "interrupted", "rerouted"})
_DEPLOYMENT_OUTCOMES = frozenset({"succeeded", "failed", "retrying", "rerouted"})


class WorkerMetrics:
    """An event sink keeping a worker's Prometheus metrics (see the module docstring for the list).

    Each instance has its own registry (``registry``), so several workers in one process, as in tests,
    do not collide. The sink never raises on an event it does not count.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("model",)) -> Counter:
            return Counter(name, doc, labels, namespace="llmqueue", registry=registry)

        self.started = counter("jobs_started", "Provider calls started (every attempt).", _BY_PRIORITY)
        self.succeeded = counter("jobs_succeeded", "Jobs that ended succeeded.", _BY_PRIORITY)
        self.failed = counter(
            "jobs_failed", "Jobs that ended failed, by error kind.", ("model", "priority", "reason")
        )
        self.retried = counter(
            "jobs_retried",
            "Failed calls sent back to the queue to try again.",
            ("model", "priority", "reason"),
        )
        self.deferred = counter(
            "jobs_deferred",
            "Jobs sent back to the queue by the limiter or a 429 cooldown (not attempts).",
            ("model", "priority", "reason"),
        )
        self.cancelled = counter("jobs_cancelled", "Jobs of a cancelled or over-budget batch.", ("reason",))
        self.interrupted = counter("jobs_interrupted", "Calls cut off by a worker stop.")
        self.rate_limited = counter("rate_limited", "Provider answers with HTTP 429.")
        self.limiter_wait = Histogram(
            "limiter_wait_seconds",
            "Seconds a job waited for the limiter: inline (in a worker slot) or deferred (in the queue).",
            ("model", "priority", "where"),
            namespace="llmqueue",
            registry=registry,
            buckets=WAIT_BUCKETS,
        )
        self.call_duration = Histogram(
            "call_duration_seconds",
            "Seconds one provider call took, answered or failed.",
            ("model",),
            namespace="llmqueue",
            registry=registry,
            buckets=CALL_BUCKETS,
        )
        self.tokens = counter("tokens", "Tokens the provider reported.", ("model", "kind"))
        self.cost = counter("cost_usd", "LiteLLM's price of the successful calls, in USD.")
        self.deployment_calls = counter(
            "deployment_calls",
            "Calls per model_list deployment, by outcome (ok, rerouted, or the error kind).",
            ("model", "deployment", "outcome"),
        )
        self.in_flight = Gauge(
            "in_flight",
            "Provider calls running in this worker now.",
            ("model",),
            namespace="llmqueue",
            registry=registry,
        )
        self.limit = Gauge(
            "limit",
            "The rate a scope runs under, per minute (0: none), and where it comes from.",
            ("scope", "kind", "source"),
            namespace="llmqueue",
            registry=registry,
        )
        self.limit_level = Gauge(
            "limit_level",
            "What the scope's shared bucket holds now (requests or tokens).",
            ("scope", "kind"),
            namespace="llmqueue",
            registry=registry,
        )
        self._limit_sources: dict[str, str] = {}

        def spend_gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ("period", "model"), namespace="llmqueue", registry=registry)

        self.spend = spend_gauge("spend_usd", "USD spent this UTC day or month under a spending limit.")
        self.spend_limit = spend_gauge("spend_limit_usd", "The spending limit of the day or month, USD.")
        self.spend_warning = spend_gauge("spend_warning", "1 once the spend passed warn_at of its limit.")

    def observe_limits(self, state: ScopeState) -> None:
        """Set the limit gauges of one scope (called by the worker's limit feedback)."""
        previous = self._limit_sources.get(state.scope)
        if previous is not None and previous != state.source:
            for kind in LIMIT_KINDS:
                with suppress(KeyError):  # input/output only where the scope had them
                    self.limit.remove(state.scope, kind, previous)
        self._limit_sources[state.scope] = state.source
        for kind, rate, level in _limit_kinds(state):
            self.limit.labels(state.scope, kind, state.source).set(rate)
            self.limit_level.labels(state.scope, kind).set(level)

    def observe_spend(self, period: str, model: str, spent: float, limit: float, warned: bool) -> None:
        """Set the spend gauges of one limit (called after each call settled under it)."""
        self.spend.labels(period, model).set(spent)
        self.spend_limit.labels(period, model).set(limit)
        self.spend_warning.labels(period, model).set(1 if warned else 0)

    def __call__(self, event: JobEvent) -> None:
        """Count one job event."""
        model = event.model or ""
        priority = "" if event.priority is None else str(event.priority)
        name = event.event
        if name == "started":
            self.started.labels(model, priority).inc()
            self.in_flight.labels(model).inc()
        elif name in _CALL_ENDS:
            self.in_flight.labels(model).dec()
        if event.status_code == 429:
            self.rate_limited.labels(model).inc()
        if event.latency is not None and name in _CALL_ENDS:
            self.call_duration.labels(model).observe(event.latency)
        if event.deployment is not None and name in _DEPLOYMENT_OUTCOMES:
            outcome = "ok" if name == "succeeded" else name if name == "rerouted" else event.reason or "error"
            self.deployment_calls.labels(model, event.deployment, outcome).inc()

        if name == "succeeded":
            self.succeeded.labels(model, priority).inc()
            if event.prompt_tokens:
                self.tokens.labels(model, "prompt").inc(event.prompt_tokens)
            if event.completion_tokens:
                self.tokens.labels(model, "completion").inc(event.completion_tokens)
            if event.cost:
                self.cost.labels(model).inc(event.cost)
        elif name == "failed":
            self.failed.labels(model, priority, event.reason or "error").inc()
        elif name == "invalid":
            self.failed.labels(model, priority, event.reason or "invalid_job").inc()
        elif name == "retrying":
            self.retried.labels(model, priority, event.reason or "error").inc()
        elif name == "deferred":
            self.deferred.labels(model, priority, event.reason or "limiter").inc()
            if event.reason is None and event.wait is not None:
                self.limiter_wait.labels(model, priority, "deferred").observe(event.wait)
        elif name == "limiter_wait" and event.wait is not None:
            self.limiter_wait.labels(model, priority, "inline").observe(event.wait)
        elif name == "cancelled":
            self.cancelled.labels(event.reason or "cancelled").inc()
        elif name == "interrupted":
            self.interrupted.labels(model).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
