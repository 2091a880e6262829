"""Every Redis key llmqueue writes, built in one place.

arq's own keys (``arq:job:<id>``, ``arq:in-progress:<id>``, ``arq:retry:<id>``) are named by arq's
constants and used as they are, so that arq's worker finds the jobs llmqueue enqueues.
"""

from __future__ import annotations

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix

PREFIX = "llmqueue"


def arq_job(job_id: str) -> str:
    """arq's key holding a queued job's serialized definition."""
    return job_key_prefix + job_id


def arq_in_progress(job_id: str) -> str:
    return in_progress_key_prefix + job_id


def arq_retry(job_id: str) -> str:
    return retry_key_prefix + job_id


ARQ_ABORT = abort_jobs_ss


def ready_prefix(queue_name: str) -> str:
    """The prefix of the queue's ready structures (the Lua scripts build the keys below from it).

    - ``<prefix>lanes:<p>``: the batches (lanes) with ready jobs at priority ``p``, scored by their
      virtual time (a sorted set: the lowest is served next; each job served adds 1/weight)
    - ``<prefix>lane:<p>:<lane>``: a lane's ready job ids, scored by their enqueue sequence
    - ``<prefix>vclock:<p>``: the virtual time a lane that becomes ready joins at
    - ``<prefix>delayed``: deferred job ids scored by when they are ready (ms)
    - ``<prefix>claimed``: job ids a worker took, scored by when (ms); until the job ends or goes back
    - ``<prefix>ready``: the ids of the jobs in some lane, i.e. waiting only for a worker's slot, but a
      paused batch's (a set, kept by the scripts beside the lanes): its SCARD is the queue depth an
      autoscaler scales on
    - ``<prefix>routes``: each queued job's ``priority<TAB>sequence<TAB>lane`` (a hash)
    - ``<prefix>weights``: a lane's weight when it is not 1 (a hash)
    - ``<prefix>seq``, ``<prefix>sweep``, ``<prefix>cursor``: counters of the scripts
    """
    return f"{PREFIX}:q:{queue_name}:"


def lanes(queue_name: str, priority: int) -> str:
    return f"{ready_prefix(queue_name)}lanes:{priority}"


def lane(queue_name: str, priority: int, lane_name: str) -> str:
    return f"{ready_prefix(queue_name)}lane:{priority}:{lane_name}"


def ready(queue_name: str) -> str:
    """The jobs waiting only for a worker's slot (a set: ``SCARD`` counts them; KEDA's Redis trigger
    names it). Deferred jobs, jobs waiting out a retry or the limiter, a paused batch's jobs and running
    jobs are not in it."""
    return f"{ready_prefix(queue_name)}ready"


def delayed(queue_name: str) -> str:
    return f"{ready_prefix(queue_name)}delayed"


def claimed(queue_name: str) -> str:
    return f"{ready_prefix(queue_name)}claimed"


def routes(queue_name: str) -> str:
    return f"{ready_prefix(queue_name)}routes"


def weights(queue_name: str) -> str:
    return f"{ready_prefix(queue_name)}weights"


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
    """The limiter's hash of one limit scope (a model string or deployment name); beside it, with
    ``:back:<dimension>`` appended, sorted sets of what recent calls gave back, by their grant's mark."""
    return f"{PREFIX}:limit:{{{scope}}}"


def limiter_parked(scope: str) -> str:
    """The jobs a scope's limiter refused and told when to come back (a sorted set; beside it, with
    ``:want`` appended, a hash of what each asked for)."""
    return f"{PREFIX}:limit:{{{scope}}}:parked"


def breaker_failures(scope: str) -> str:
    """A counter of one deployment's recent failures (5xx, timeouts), expiring a minute after the first."""
    return f"{PREFIX}:breaker:{{{scope}}}:fails"


def breaker_last_out(scope: str) -> str:
    """Set when a deployment is taken out (the reason), kept a while after it came back."""
    return f"{PREFIX}:breaker:{{{scope}}}:last_out"


def breaker_down(scope: str) -> str:
    """A hash set while a deployment is taken out (reason, times out), expiring when it comes back."""
    return f"{PREFIX}:breaker:{{{scope}}}:down"


def batch_deployments(batch_id: str) -> str:
    """A batch's calls per deployment (a hash: ``<deployment>:<outcome>`` → count)."""
    return f"{PREFIX}:batch:{batch_id}:deployments"


def limit_scopes() -> str:
    """Every limit scope a worker has acquired from (a set), for ``llmqueue limits``."""
    return f"{PREFIX}:limit-scopes"


def batch(batch_id: str) -> str:
    """A batch's hash: settings (budget caps, source file) and running totals (counts, tokens, cost);
    for ``llmqueue run``, how many jobs (``written``) and bytes (``written_bytes``) its output holds."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """A batch's job ids scored by their input line (a sorted set)."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_custom_ids(batch_id: str) -> str:
    """A batch's custom ids by job id (a hash); ``llmqueue run`` drops each once its line is written."""
    return f"{PREFIX}:batch:{batch_id}:custom-ids"


def batch_fingerprints(batch_id: str) -> str:
    """What each of a batch's jobs asks of the provider, hashed, by job id (a hash)."""
    return f"{PREFIX}:batch:{batch_id}:fingerprints"


def batch_scopes(batch_id: str) -> str:
    """The limit scopes a batch's jobs ran in (a set), for ``llmqueue status``."""
    return f"{PREFIX}:batch:{batch_id}:scopes"


def batch_run_lock(batch_id: str) -> str:
    """Held by the ``llmqueue run`` running a batch (a string naming it, with a short TTL it refreshes)."""
    return f"{PREFIX}:batch:{batch_id}:run-lock"


def batch_blocks(batch_id: str) -> str:
    """A submitted batch's lines not yet queued, in zlib-compressed blocks (a hash: block number →
    bytes; ``llmqueue.batches.blocks``). Each block is removed once its jobs are queued."""
    return f"{PREFIX}:batch:{batch_id}:blocks"


def batch_block_lease(batch_id: str) -> str:
    """Held (a few seconds, ``SET NX PX``) by the process queueing a batch's next block."""
    return f"{PREFIX}:batch:{batch_id}:block-lease"


def windowed_batches(queue_name: str) -> str:
    """The queue's batches that still have blocks of lines to queue (a set), which workers look at."""
    return f"{PREFIX}:windowed:{queue_name}"


def batch_keys(batch_id: str) -> list[str]:
    """Every key of a batch's own bookkeeping: they expire with its results (``llmqueue.queue.retention``).

    Its run lock and block lease are not among them: they have short TTLs of their own.
    """
    return [
        batch(batch_id),
        batch_jobs(batch_id),
        batch_custom_ids(batch_id),
        batch_fingerprints(batch_id),
        batch_scopes(batch_id),
        batch_deployments(batch_id),
        batch_api(batch_id),
        batch_blocks(batch_id),
    ]


def batches() -> str:
    """All batch ids, scored by creation time (a sorted set)."""
    return f"{PREFIX}:batches"


def inbox(producer_id: str) -> str:
    """A producer's inbox: ids of its jobs as they finish (a list)."""
    return f"{PREFIX}:inbox:{producer_id}"


def replication_mark() -> str:
    """A counter written before each ``WAIT``: a replica past it holds every earlier write."""
    return f"{PREFIX}:replication-mark"


def worker(worker_id: str) -> str:
    """A live worker's registry entry (a hash refreshed by its heartbeat, expiring when it stops)."""
    return f"{PREFIX}:worker:{worker_id}"


WORKER_PATTERN = f"{PREFIX}:worker:*"


def worker_starting(mark_id: str) -> str:
    """A worker process on its way up, before its registry entry (JSON: its host, pid and queue;
    written before LiteLLM's import, deleted by its first heartbeat, expiring if it never comes up:
    its age is read from its time to live)."""
    return f"{PREFIX}:starting:{mark_id}"


STARTING_PATTERN = f"{PREFIX}:starting:*"


def cache_entry(cache_key: str) -> str:
    """A cached provider response (JSON) by its request hash (``[cache] backend = "redis"``)."""
    return f"{PREFIX}:cache:{cache_key}"


def cache_index() -> str:
    """The Redis response cache's keys, scored by last use (a sorted set)."""
    return f"{PREFIX}:cache-index"


def cache_sizes() -> str:
    """The Redis response cache's entry sizes in bytes, their ``__total__`` and ``__hits__`` (a hash)."""
    return f"{PREFIX}:cache-sizes"


def cache_flight(cache_key: str) -> str:
    """The id of the job making the call for this request hash now; others wait for its answer."""
    return f"{PREFIX}:cache-flight:{cache_key}"


def batch_api(batch_id: str) -> str:
    """The provider batches of a batch sent through the Batch API tier: provider batch id -> state (JSON)."""
    return f"{PREFIX}:batch:{batch_id}:provider-batches"


def job_stream(job_id: str) -> str:
    """A streamed job's Redis Stream of answer deltas (``JobHandle.stream``), expiring with the job."""
    return f"{PREFIX}:stream:{job_id}"


def spend(period: str) -> str:
    """The spending of one UTC period (``day:2026-12-06`` or ``month:2026-12``), a hash of USD: ``spent``
    and ``reserved`` (calls in flight) over all models, ``spent:<model>`` and ``reserved:<model>`` per
    model, and ``warned:<model or *>`` once a warning was given. One hash tag, so one script takes all."""
    return f"{PREFIX}:spend:{{spend}}:{period}"


def spend_held() -> str:
    """Jobs held by a spending limit or a pause (a hash: job id → JSON of its batch, the reason, since
    when, and for a pause which one: ``batch:<id>`` or ``scope:<name>``)."""
    return f"{PREFIX}:spend:{{spend}}:held"


def spend_limits() -> str:
    """The spending limits the last worker to start applies (JSON), for ``status`` and the dashboard."""
    return f"{PREFIX}:spend:{{spend}}:limits"


def paused_scopes() -> str:
    """The limit scopes (models, deployments) paused now (a hash: scope → when it was paused, Unix s).
    A paused batch is marked in its own hash (``paused``)."""
    return f"{PREFIX}:paused-scopes"
