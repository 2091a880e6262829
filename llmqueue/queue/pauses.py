"""Pausing a batch or a limit scope: its jobs are held, as a reached spending limit holds them, until
it is resumed.

The rules, in words:

- A paused batch (``paused`` in its hash) is skipped by the workers' claim: its lane leaves its
  priority's turn and its jobs stay in it, queued, taking no worker slot, counting no attempt,
  making no call and costing nothing. Calls already sent finish.
- A paused limit scope (a model, a deployment, a ``limit_scope``: :func:`llmqueue.keys.paused_scopes`)
  starts no call. A worker that takes a job bound for it **holds** it, as a reached spending limit
  does: the job goes back to the queue deferred (arq's ``Retry``: no worker slot, no attempt, no call)
  and is recorded among the held jobs (``llmqueue status``, the dashboard); it checks again every
  :data:`PAUSE_RECHECK` seconds. A batch's job that a worker took just before its batch was paused
  (or one arq's own worker runs) is held the same way.
- Resuming clears the mark, lists a batch's lane again at the current virtual time (it gets no burst
  for the time it waited), and brings every job held for it forward to now: they start at once, each
  once.
- A job routed over deployments runs on those not paused; it is held when all of them are, or when
  its model name is.
- Workers read the marks as they claim jobs (in the claim's script: no extra round trip), so a pause
  holds every job claimed after it, on every worker at once, with no restart. A job claimed
  before and waiting in place for the limiter (at most ``max_inline_wait``) still goes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from arq.worker import Retry
from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.queue.ready import ReadyQueue
from llmqueue.queue.scripts import now_ms, script
from llmqueue.queue.store import WAKE_TOKENS, AttemptStart

__all__ = ["PAUSE_RECHECK", "Pauses", "pause_of", "pause_words"]

PAUSE_RECHECK = 60.0
"""The longest a held job waits before it checks its pause again (seconds); a resume wakes it sooner."""
RELEASE_CHECKS = 5
RELEASE_CHECK_INTERVAL = 0.02
"""A resume looks this many times, this many seconds apart, for held jobs still on their way back."""
_HOLD = resources.files("llmqueue.queue").joinpath("lua", "pause_hold.lua").read_text(encoding="utf-8")


def pause_of(start: AttemptStart, batch_id: str | None, model: str, scopes: Sequence[str]) -> str | None:
    """The pause that holds a job (``batch:<id>`` or ``scope:<name>``), or None when it may run: its
    batch's, its model's, or that of its scope when every scope it could run on (``scopes``) is paused."""
    if batch_id is not None and start.batch_paused:
        return f"batch:{batch_id}"
    paused = start.paused_scopes
    if not paused:
        return None
    if model in paused:
        return f"scope:{model}"
    if scopes and all(scope in paused for scope in scopes):
        return f"scope:{scopes[0]}"
    return None


def pause_words(pause: str) -> str:
    """``batch b1 is paused``, ``scope gpt-4o is paused``: what a held job shows as its reason."""
    kind, _, name = pause.partition(":")
    return f"{kind} {name} is paused: held until it is resumed"


class Pauses:
    """Pauses and resumes batches and scopes on one queue, and holds the jobs they stop."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._hold = redis.register_script(_HOLD)
        self._pause_lane = redis.register_script(script("pause_lane.lua"))
        self._resume_lane = redis.register_script(script("resume_lane.lua"))

    async def hold(self, job_id: str, batch_id: str | None, pause: str, emit: Callable[..., None]) -> None:
        """Hold the job for ``pause``: raises arq's ``Retry`` (not an attempt) after recording it, its
        ``deferred`` step emitted with the reason ``paused``. Returns when the pause ended meanwhile."""
        kind, _, name = pause.partition(":")
        marked = (keys.batch(name), "paused") if kind == "batch" else (keys.paused_scopes(), name)
        record = {"batch_id": batch_id, "reason": pause_words(pause), "since": time.time(), "pause": pause}
        if not await self._hold(args=[keys.spend_held(), job_id, json.dumps(record), *marked]):
            return
        emit("deferred", wait=PAUSE_RECHECK, reason="paused", message=pause_words(pause))
        raise Retry(defer=PAUSE_RECHECK)

    async def pause_batch(self, batch_id: str) -> None:
        """Hold the batch's jobs that have not started a call yet (the batch must exist); its ready jobs
        leave the count an autoscaler reads (``keys.ready``)."""
        prefix = keys.ready_prefix(self.queue_name)
        await self._pause_lane(args=[prefix, self.queue_name, now_ms(), batch_id, time.time()])

    async def resume_batch(self, batch_id: str) -> int:
        """Let the batch's jobs run again; how many jobs a worker had taken and held were brought forward
        (those its claim skipped are in its lane, ready, once more)."""
        prefix = keys.ready_prefix(self.queue_name)
        if await self._resume_lane(args=[prefix, self.queue_name, now_ms(), batch_id]):
            await self._wake_workers(WAKE_TOKENS)
        return await self._wake(f"batch:{batch_id}")

    async def pause_scope(self, scope: str) -> None:
        """Hold every job that would call ``scope`` (a model, deployment or ``limit_scope`` name)."""
        await self.redis.hset(keys.paused_scopes(), scope, time.time())

    async def resume_scope(self, scope: str) -> int:
        """Let calls to ``scope`` go again; how many held jobs were brought forward."""
        await self.redis.hdel(keys.paused_scopes(), scope)
        return await self._wake(f"scope:{scope}")

    async def paused_scopes(self) -> dict[str, float]:
        """The scopes paused now, and since when (Unix seconds)."""
        raw = await self.redis.hgetall(keys.paused_scopes())
        return {scope.decode(): float(since) for scope, since in raw.items()}

    async def _wake(self, pause: str) -> int:
        held: dict[bytes, bytes] = await self.redis.hgetall(keys.spend_held())
        woken = [job.decode() for job, raw in held.items() if _record(raw).get("pause") == pause]
        if not woken:
            return 0
        ready = ReadyQueue(self.redis, self.queue_name, claim_ttl=0)
        await ready.wake([(job, 0.0) for job in woken])
        # A job held a moment ago may not be back in the queue yet (its worker is releasing it): wake
        # it again once it is, rather than let it wait out PAUSE_RECHECK.
        pending = woken
        for _ in range(RELEASE_CHECKS):
            pending = await self._still_claimed(pending)
            if not pending:
                break
            await asyncio.sleep(RELEASE_CHECK_INTERVAL)
            await ready.wake([(job, 0.0) for job in pending])
        await self.redis.hdel(keys.spend_held(), *woken)
        await self._wake_workers(min(WAKE_TOKENS, len(woken)))
        return len(woken)

    async def _still_claimed(self, jobs: list[str]) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.zscore(keys.claimed(self.queue_name), job)
            scores = await pipe.execute()
        return [job for job, score in zip(jobs, scores, strict=True) if score is not None]

    async def _wake_workers(self, count: int) -> None:
        """Wake idle workers (blocked between polls) so they claim the jobs let go now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(keys.wake(self.queue_name), *([b"1"] * count))
            pipe.ltrim(keys.wake(self.queue_name), 0, WAKE_TOKENS - 1)
            await pipe.execute()


def _record(raw: bytes) -> dict[str, Any]:
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
