"""Every Redis key llmqueue writes, built in one place.

arq's own keys (``arq:job:<id>``, ``arq:in-progress:<id>``, ``arq:retry:<id>``) are named by arq's
constants and used as they are, so that arq's worker finds the jobs llmqueue enqueues.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

PREFIX = "llmqueue"


def arq_job(job_id: str) -> str:
    """arq's key holding a queued job's serialized definition."""
    return job_key_prefix + job_id


def arq_in_progress(job_id: str) -> str:
    return in_progress_key_prefix + job_id


def arq_retry(job_id: str) -> str:
    return retry_key_prefix + job_id


def wake(queue_name: str) -> str:
    """A list producers push to after queueing, which idle workers block on between polls."""
    return f"{PREFIX}:wake:{queue_name}"


def result(job_id: str) -> str:
    """A job's final result (JSON), kept for ``result_ttl`` seconds."""
    return f"{PREFIX}:result:{job_id}"


def done(job_id: str) -> str:
    """A list a waiter blocks on (BLPOP) until the job's result is stored."""
    return f"{PREFIX}:done:{job_id}"


def state(job_id: str) -> str:
    """A hash of a job's running state: llmqueue's attempt count and timestamps."""
    return f"{PREFIX}:state:{job_id}"


def attempt_errors(job_id: str) -> str:
    """A list of per-attempt error summaries (JSON) for a job."""
    return f"{PREFIX}:errors:{job_id}"


def limiter(scope: str) -> str:
    """The token-bucket hash of one limit scope (a model string or deployment name)."""
    return f"{PREFIX}:limit:{{{scope}}}"


def batch(batch_id: str) -> str:
    """A batch's hash: settings (budget caps, source file) and running totals (counts, tokens, cost)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """A batch's job ids scored by their input line (a sorted set)."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_custom_ids(batch_id: str) -> str:
    """A batch's custom ids by job id (a hash)."""
    return f"{PREFIX}:batch:{batch_id}:custom-ids"


def batch_run_lock(batch_id: str) -> str:
    """Held by the ``llmqueue run`` running a batch (a string naming it, with a short TTL it refreshes)."""
    return f"{PREFIX}:batch:{batch_id}:run-lock"


def batches() -> str:
    """All batch ids, scored by creation time (a sorted set)."""
    return f"{PREFIX}:batches"


def inbox(producer_id: str) -> str:
    """A producer's inbox: ids of its jobs as they finish (a list)."""
    return f"{PREFIX}:inbox:{producer_id}"


def worker(worker_id: str) -> str:
    """A live worker's registry entry (a hash refreshed by its heartbeat, expiring when it stops)."""
    return f"{PREFIX}:worker:{worker_id}"


WORKER_PATTERN = f"{PREFIX}:worker:*"
