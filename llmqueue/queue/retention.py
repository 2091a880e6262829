"""How long a batch's bookkeeping stays in Redis: as long as its jobs and results do, then it expires.

A job's result is kept ``result_ttl`` seconds after it is stored; a queued job at most ``job_ttl``
seconds. A batch's own keys (``keys.batch_keys``: its totals, job list, custom ids, fingerprints,
scopes, deployments and provider batches) and its entry in the set of batches follow them:

- each time jobs are queued for it, they are kept at least ``job_ttl + result_ttl`` seconds (a job may
  wait that long for a worker, then its result is kept that long);
- each time one of its jobs finishes, at least ``result_ttl`` seconds, and exactly that once every job
  has finished (the finish script, ``lua/finish.lua``): a finished batch expires with its last result.

TTLs are only ever lengthened while jobs are left, so a batch never expires under its own queued jobs.
``llmqueue forget BATCH`` removes a finished batch at once (:meth:`llmqueue.batches.control.Batches.forget`).
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from llmqueue import keys


def keep_batch(pipe: Pipeline, batch_id: str, seconds: float) -> None:
    """Queue commands that keep the batch's keys at least ``seconds`` from now (set or lengthen, never
    shorten: ``EXPIRE NX`` for a key without a TTL, then ``EXPIRE GT``)."""
    ttl = max(1, int(seconds))
    for key in [*keys.batch_keys(batch_id), keys.batches()]:
        pipe.expire(key, ttl, nx=True)
        pipe.expire(key, ttl, gt=True)


def queued_batch_ttl(job_ttl: float, result_ttl: float) -> float:
    """How long a batch is kept at least after jobs are queued for it (see the module docstring)."""
    return job_ttl + result_ttl
