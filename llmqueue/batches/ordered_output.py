"""A batch's output written as it runs, in input order, and its jobs' keys dropped once written.

The writer appends the longest run of finished jobs that follows what it wrote (the in-order prefix)
to ``OUTPUT.partial``; results that finished out of order wait in Redis, bounded by the run's window.
After each write it records in the batch's hash how many jobs (``written``, a rank in the batch's job
list) and bytes (``written_bytes``) the file holds, then deletes those jobs' result, state and error
keys and their custom ids: what stays per line is its place in the job list and its fingerprint, all
that a resumed run needs to skip it and to refuse a changed file. A resumed run cuts the partial file
back to ``written_bytes`` (lines written after the last record) and appends from there; the file is
renamed to OUTPUT once every job is written, so OUTPUT appears whole or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from llmqueue import keys
from llmqueue.batches.output import json_line, output_record
from llmqueue.errors import LLMQueueError
from llmqueue.models import JobResult
from llmqueue.queue.store import JobStore

KEPT_FAILURES = 100
"""Failure lines kept for the run's summary; past these only their count is."""
_CHUNK = 1000

__all__ = ["KEPT_FAILURES", "OrderedWriter"]


class OrderedWriter:
    """Writes a batch's results to ``output`` in input order as they come (see the module docstring)."""

    def __init__(self, store: JobStore, batch_id: str, output: Path) -> None:
        self.store = store
        self.redis = store.redis
        self.batch_id = batch_id
        self.output = output
        self.partial = output.with_name(output.name + ".partial")
        self.written = 0
        self.failures: list[str] = []
        self.failure_count = 0
        self._bytes = 0
        self._file: BinaryIO | None = None

    async def open(self) -> None:
        """Open the partial file: anew for a batch that wrote nothing, else cut back to what it recorded."""
        raw = await self.redis.hmget(keys.batch(self.batch_id), ["written", "written_bytes"])
        self.written, self._bytes = int(raw[0] or 0), int(raw[1] or 0)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.written == 0:
            self._file = self.partial.open("w+b")
            return
        size = self.partial.stat().st_size if self.partial.exists() else -1
        if size < self._bytes:
            raise LLMQueueError(
                f"batch {self.batch_id} wrote its first {self.written} result(s) to {self.partial} and "
                "dropped them from Redis, but that file is gone or shorter: resume with the same --output "
                "and its .partial file in place"
            )
        self._file = self.partial.open("r+b")
        self._file.truncate(self._bytes)
        self._file.seek(self._bytes)

    async def drain(self, *, final: bool = False) -> int:
        """Write the finished jobs that follow what is written; returns how many were written.

        ``final`` (the batch is done): write every job left, a job without a result (expired) as a
        ``missing`` record, as ``llmqueue results`` does.
        """
        count = 0
        while True:
            members = await self.redis.zrange(
                keys.batch_jobs(self.batch_id), self.written, self.written + _CHUNK - 1
            )
            if not members:
                return count
            job_ids = [member.decode() for member in members]
            raws = await self.redis.mget([keys.result(job_id) for job_id in job_ids])
            # Only the results up to the first missing one are read (most polls find few in order).
            present = (
                len(raws) if final else next((n for n, raw in enumerate(raws) if raw is None), len(raws))
            )
            results = [None if raw is None else JobResult.model_validate_json(raw) for raw in raws[:present]]
            ready = (
                len(results)
                if final
                else next((n for n, result in enumerate(results) if not _written_now(result)), len(results))
            )
            if ready == 0:
                return count
            custom_ids = await self.redis.hmget(keys.batch_custom_ids(self.batch_id), job_ids[:ready])
            lines: list[str] = []
            for job_id, custom, result in zip(job_ids, custom_ids, results[:ready], strict=False):
                custom_id = custom.decode() if custom else ""
                self._count_failure(result, custom_id)
                lines.append(json_line(output_record(result, custom_id=custom_id, job_id=job_id)) + "\n")
            await self._append("".join(lines).encode(), job_ids[:ready])
            count += ready
            if ready < len(job_ids):
                return count

    async def _append(self, data: bytes, job_ids: list[str]) -> None:
        assert self._file is not None, "open() first"
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())  # what the hash records as written is on disk before its keys go
        self.written += len(job_ids)
        self._bytes += len(data)
        dropped = [key for job_id in job_ids for key in _job_keys(job_id)]
        async with self.redis.pipeline(transaction=True) as pipe:
            progress = {"written": self.written, "written_bytes": self._bytes}
            pipe.hset(keys.batch(self.batch_id), mapping=progress)
            pipe.delete(*dropped)
            pipe.hdel(keys.batch_custom_ids(self.batch_id), *job_ids)
            await pipe.execute()

    async def snapshot(self) -> None:
        """Write OUTPUT whole, the jobs not yet written read from Redis and left there, the partial
        file untouched: a batch its budget stopped, whose cancelled jobs a resumed run sends again."""
        assert self._file is not None, "open() first"
        self._file.flush()
        tmp = self.output.with_name(self.output.name + ".snapshot")
        with tmp.open("wb") as out:
            self._file.seek(0)
            while block := self._file.read(1 << 20):
                out.write(block)
            self._file.seek(self._bytes)
            start = self.written
            while members := await self.redis.zrange(
                keys.batch_jobs(self.batch_id), start, start + _CHUNK - 1
            ):
                job_ids = [member.decode() for member in members]
                results = await self.store.get_results(job_ids)
                custom_ids = await self.redis.hmget(keys.batch_custom_ids(self.batch_id), job_ids)
                for job_id, custom, result in zip(job_ids, custom_ids, results, strict=True):
                    custom_id = custom.decode() if custom else ""
                    self._count_failure(result, custom_id)
                    record = output_record(result, custom_id=custom_id, job_id=job_id)
                    out.write((json_line(record) + "\n").encode())
                start += len(members)
        tmp.replace(self.output)

    def _count_failure(self, result: JobResult | None, custom_id: str) -> None:
        if result is not None and result.ok:
            return
        self.failure_count += 1
        if len(self.failures) < KEPT_FAILURES:
            reason = result.errors[-1].message if result and result.errors else "no result"
            self.failures.append(f"{custom_id}: {reason}")

    def close(self, *, complete: bool) -> None:
        """Close the file; ``complete`` (every job written) renames it to the output."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if complete:
            self.partial.replace(self.output)


def _written_now(result: JobResult | None) -> bool:
    """A result written (and dropped) as soon as it is in order: any but none, and but a cancelled one,
    which a resumed run may send again (``retry_cancelled``) and is written once the batch is done."""
    return result is not None and result.status != "cancelled"


def _job_keys(job_id: str) -> tuple[str, ...]:
    """A finished job's own keys, dropped once its output line is written."""
    return (keys.result(job_id), keys.done(job_id), keys.state(job_id), keys.attempt_errors(job_id))
