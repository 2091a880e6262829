"""Windowed ``llmqueue submit``: a batch's lines stored once in Redis in compressed blocks, and queued
block by block as its jobs finish, by whichever process looks first (the submitter, then any worker).

A batch submitted this way holds, beside the keys of every batch:

- ``keys.batch_blocks``: block ``k`` is the raw bytes of lines ``k*B+1 .. (k+1)*B`` of the file (``B``
  the batch's ``block_lines``), zlib-compressed; a line the submission refused is stored blank, so a
  block turns into the jobs the submitter accepted, numbered by their lines;
- in the batch hash: ``blocks`` (how many), ``block_lines``, ``fed_blocks`` (the next block to queue),
  ``window`` and ``block_options`` (what turns a line into a job: default model, settings group,
  priority, cache; never an API key);
- ``keys.windowed_batches``: the queue's batches with blocks left, which every worker looks at.

A block is queued (:func:`expand_window`) while the batch's window (``window_room``) has room for all
of it: ``block_lines`` is at most half the window. The process queueing a batch's block holds the
batch's lease (``SET NX PX``), so two processes do not parse the same block at once; its jobs are
queued and listed in one transaction per chunk, and a job the batch lists is not queued again, so a
process that dies mid-block leaves the rest to the next one and nothing is queued twice. Then
``fed_blocks`` moves on and the block is removed, only while the lease is still the process's own.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import secrets
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.input import LineError, Refuser, job_id_for, read_requests
from llmqueue.batches.window_bounds import FEED_CHUNK, window_room
from llmqueue.cache import CacheStore
from llmqueue.errors import BatchError
from llmqueue.models import AttemptError, Job, JobResult, Timings
from llmqueue.queue.ledger import BatchLedger
from llmqueue.queue.replication import through_failover
from llmqueue.queue.retention import keep_batch
from llmqueue.settings import Settings

if TYPE_CHECKING:
    from llmqueue.batches.submit import BatchSubmission, SubmitReport

__all__ = [
    "BLOCK_LINES",
    "COMPRESSION_LEVEL",
    "BlockOptions",
    "block_lines_for",
    "drop_blocks",
    "expand_window",
    "store_blocks",
]

logger = logging.getLogger("llmqueue.batches")

BLOCK_LINES = 1000
"""Lines per block at most; a batch's blocks are at most half its window."""
COMPRESSION_LEVEL = 4
"""zlib's level. For 200,000 lines of ~1 KB varied prose: level 1 stores 369-378 bytes a line for
3.6 s of CPU, 4 stores 321-333 for 5.1-5.5 s, 6 stores 306-320 for 10.8-11.3 s (the check of the same
lines costs 7 s)."""
LEASE_MS = 30_000
"""How long a process may hold a batch's lease: far longer than queueing one block takes."""
_WRITE_BLOCKS = 16
_WRITE_BYTES = 1_000_000
"""Blocks written per round trip at most, and bytes after which they are written."""

# KEYS: lease, batch hash, blocks hash, windowed set. ARGV: token, block number, batch id.
# The next block, only for the lease's holder and only from the block it queued; the batch leaves the
# windowed set with its last block.
_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('HGET', KEYS[2], 'fed_blocks') or '0') ~= tonumber(ARGV[2]) then return -1 end
local fed = tonumber(ARGV[2]) + 1
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[2], 'fed_blocks', fed)
if fed >= tonumber(redis.call('HGET', KEYS[2], 'blocks') or '0') then
  redis.call('SREM', KEYS[4], ARGV[3])
end
return fed
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_STATE_FIELDS = ["blocks", "block_lines", "fed_blocks", "window", "block_options"]


@dataclass(frozen=True)
class BlockOptions:
    """What turns a stored line into the job the submitter would have made (``read_requests``)."""

    default_model: str | None
    llm_config: str | None
    priority: int
    cache: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BlockOptions:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class _State:
    blocks: int
    block_lines: int
    fed_blocks: int
    window: int
    options: BlockOptions


def block_lines_for(window: int) -> int:
    """Lines per block for a batch of this window: half of it, at most ``BLOCK_LINES``."""
    return max(1, min(BLOCK_LINES, window // 2))


def file_blocks(path: Path, block_lines: int, blank: set[int]) -> Iterator[bytes]:
    """The file's lines in compressed blocks of ``block_lines``, the lines numbered in ``blank`` empty."""
    with path.open("rb") as handle:
        lines: list[bytes] = []
        for number, raw in enumerate(handle, start=1):
            lines.append(b"\n" if number in blank else raw)
            if len(lines) == block_lines:
                yield zlib.compress(b"".join(lines), COMPRESSION_LEVEL)
                lines = []
        if lines:
            yield zlib.compress(b"".join(lines), COMPRESSION_LEVEL)


async def store_blocks(
    batches: BatchSubmission,
    path: Path,
    batch_id: str,
    options: BlockOptions,
    *,
    window: int,
    total: int,
    blank: set[int],
    ttl: float,
) -> tuple[int, int]:
    """Store the blocks of ``path`` the batch has not queued yet and make it windowed, with ``total``
    jobs (its valid request lines); returns the numbers of the first block to queue and of blocks.

    A batch submitted before keeps its block size, and its blocks not queued yet are queued with
    ``options``; a block it holds that the file's differs from (an edited file) is refused with
    BatchError, before anything of the file is stored."""
    redis = batches.redis
    state = await _read_state(redis, batch_id)
    if state is None:  # its block size and options first: a submission cut short goes on with them
        state = _State(0, block_lines_for(window), 0, window, options)
        await redis.hset(
            keys.batch(batch_id),
            mapping={
                "block_lines": state.block_lines,
                "window": window,
                "block_options": options.to_json(),
                "fed_blocks": 0,
            },
        )
    else:  # what lines say nothing of (a default model, a priority) may be given anew, as before
        await redis.hset(keys.batch(batch_id), "block_options", options.to_json())
    block_lines, first = state.block_lines, state.fed_blocks
    count = 0
    pending: dict[int, bytes] = {}
    for number, block in enumerate(file_blocks(path, block_lines, blank)):
        count = number + 1
        if number < first:
            continue
        pending[number] = block
        if len(pending) >= _WRITE_BLOCKS or sum(map(len, pending.values())) >= _WRITE_BYTES:
            await _write_blocks(redis, path, batch_id, pending, block_lines, ttl)
            pending = {}
    if pending:
        await _write_blocks(redis, path, batch_id, pending, block_lines, ttl)
    stray = [int(field) for field in await redis.hkeys(keys.batch_blocks(batch_id)) if int(field) >= count]
    if stray:
        raise BatchError(
            f"{path}: batch {batch_id} holds {len(stray)} block(s) of lines past the end of this file: it "
            "was submitted from a longer file. Give that file to go on with it, or submit this one as a "
            "new batch (--batch NAME)"
        )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.batch(batch_id), "blocks", count)
        pipe.hsetnx(keys.batch(batch_id), "fed_blocks", first)
        # The file's valid lines; a batch cancelled before (its blocks dropped) counted what it listed.
        pipe.zcard(keys.batch_jobs(batch_id))
        if first < count:
            pipe.sadd(keys.windowed_batches(batches.store.queue_name), batch_id)
        keep_batch(pipe, batch_id, ttl)
        listed = (await pipe.execute())[2]
    await redis.hset(keys.batch(batch_id), "total", max(total, int(listed)))
    return first, count


async def _write_blocks(
    redis: Redis, path: Path, batch_id: str, blocks: dict[int, bytes], block_lines: int, ttl: float
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.batch(batch_id), "fed_blocks")
        pipe.hmget(keys.batch_blocks(batch_id), list(blocks))
        fed, stored = await pipe.execute()
    for (number, block), known in zip(blocks.items(), stored, strict=True):
        if known is not None and known != block and zlib.decompress(known) != zlib.decompress(block):
            first_line = number * block_lines + 1
            raise BatchError(
                f"{path}: batch {batch_id} holds other lines {first_line}-{first_line + block_lines - 1} "
                "than this file (another file or an edited line): nothing more was stored. Give its "
                "first file to go on with the batch, or submit this one as a new batch (--batch NAME)"
            )
    # A worker may have queued some of them meanwhile (a batch submitted again while it runs).
    blocks = {number: block for number, block in blocks.items() if number >= int(fed or 0)}
    if not blocks:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.batch_blocks(batch_id), mapping={str(number): block for number, block in blocks.items()}
        )
        keep_batch(pipe, batch_id, ttl)
        await pipe.execute()


async def expand_window(
    batches: BatchSubmission,
    batch_id: str,
    report: SubmitReport,
    *,
    refuse: Refuser | None,
    owner: str,
    answered_from: tuple[CacheStore, Settings] | None = None,
) -> None:
    """Queue the batch's next blocks while its window has room for a whole block (none if another
    process holds its lease). Lines ``refuse`` refuses end as failed results saying why (in
    ``report.rejected`` too), counted in the batch's totals; ``owner`` names the process in them."""
    # Each step waits out a failover (its writes are idempotent, or compare a token): right after the
    # block's acknowledged writes waited one out, a lagging sentinel may name the old master a moment.
    redis = batches.redis
    state = await through_failover(functools.partial(_read_state, redis, batch_id))
    if state is None or state.fed_blocks >= state.blocks:
        await redis.srem(keys.windowed_batches(batches.store.queue_name), batch_id)
        return
    # A spent or cancelled batch always has room (its jobs end unsent): a window's worth per call.
    for _ in range(max(1, max(state.window, FEED_CHUNK) // state.block_lines)):
        token = secrets.token_hex(8)
        lease = functools.partial(redis.set, keys.batch_block_lease(batch_id), token, nx=True, px=LEASE_MS)
        if not await through_failover(lease):
            return
        try:
            # The room is read under the lease: another process may have just queued a block.
            room = await through_failover(
                functools.partial(window_room, redis, batch_id, state.window, written_bound=False)
            )
            if room < state.block_lines:
                return
            more = await _expand_next(batches, batch_id, report, token, refuse, owner, answered_from)
        finally:
            release = functools.partial(redis.eval, _RELEASE, 1, keys.batch_block_lease(batch_id), token)
            await through_failover(release)
        if not more:
            return


async def _expand_next(
    batches: BatchSubmission,
    batch_id: str,
    report: SubmitReport,
    token: str,
    refuse: Refuser | None,
    owner: str,
    answered_from: tuple[CacheStore, Settings] | None,
) -> bool:
    """Queue the batch's next block under its lease; whether blocks are left."""
    redis = batches.redis
    # Read again: another process may have moved on.
    state = await through_failover(functools.partial(_read_state, redis, batch_id))
    if state is None or state.fed_blocks >= state.blocks:
        return False
    number = state.fed_blocks
    block = await through_failover(functools.partial(redis.hget, keys.batch_blocks(batch_id), str(number)))
    if block is None:
        logger.warning(
            "batch %s: its block %d of lines to queue is gone from Redis (the batch expired or was "
            "forgotten); its remaining lines are not queued",
            batch_id,
            number,
        )
        await redis.srem(keys.windowed_batches(batches.store.queue_name), batch_id)
        return False
    jobs: list[Job] = []
    refused: list[LineError] = []
    for item in block_items(batch_id, block, number * state.block_lines + 1, state.options, refuse):
        if isinstance(item, LineError):
            refused.append(item)
        else:
            jobs.append(item)
    if jobs:
        await batches.feed_chunk(batch_id, jobs, report, answered_from)
    if refused:
        await _fail_refused(batches, batch_id, refused, report, owner)
    keys_ = [
        keys.batch_block_lease(batch_id),
        keys.batch(batch_id),
        keys.batch_blocks(batch_id),
        keys.windowed_batches(batches.store.queue_name),
    ]
    advance = functools.partial(redis.eval, _ADVANCE, len(keys_), *keys_, token, number, batch_id)
    fed = int(await through_failover(advance))  # -1 if a first try was applied: others go on
    return 0 < fed < state.blocks


def block_items(
    batch_id: str, block: bytes, first_line: int, options: BlockOptions, refuse: Refuser | None
) -> Iterator[Job | LineError]:
    """The jobs of a stored block (lines numbered from ``first_line``), as the submitter made them."""
    lines = (raw.decode("utf-8") for raw in io.BytesIO(zlib.decompress(block)))
    for item in read_requests(
        lines,
        batch_id=batch_id,
        default_model=options.default_model,
        llm_config=options.llm_config,
        priority=options.priority,
        refuse=refuse,
        first_line=first_line,
    ):
        if isinstance(item, Job):
            item.cache = options.cache
        yield item


async def _fail_refused(
    batches: BatchSubmission, batch_id: str, refused: list[LineError], report: SubmitReport, owner: str
) -> None:
    """List the lines refused as they were queued, each with a failed result saying why."""
    job_ids = [job_id_for(batch_id, error.line) for error in refused]
    listed = await batches.redis.zmscore(keys.batch_jobs(batch_id), job_ids)
    new = [
        (job_id, error)
        for job_id, error, score in zip(job_ids, refused, listed, strict=True)
        if score is None
    ]
    if not new:
        return
    async with batches.redis.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.batch_jobs(batch_id), {job_id: error.line for job_id, error in new})
        pipe.hset(keys.batch_custom_ids(batch_id), mapping={job_id: "" for job_id, _ in new})
        await pipe.execute()
    now = datetime.now(UTC)
    results = [
        JobResult(
            job_id=job_id,
            batch_id=batch_id,
            status="failed",
            attempts=0,
            errors=[
                AttemptError(attempt=0, kind="invalid_job", message=f"refused as queued: {error.reason}")
            ],
            timings=Timings(queued_at=now),
            worker_id=owner,
            metadata={"line": error.line},
        )
        for job_id, error in new
    ]
    await batches.store.finish_many([(result, False) for result in results])
    report.rejected.extend(error for _, error in new)


async def drop_blocks(batches: BatchSubmission, batch_id: str) -> bool:
    """Remove the batch's blocks not queued yet (a cancel): its total becomes the jobs it lists.
    Waits for the lease (a block being queued); False when the batch had no blocks left."""
    redis = batches.redis
    lease = keys.batch_block_lease(batch_id)
    token = secrets.token_hex(8)
    for _ in range(LEASE_MS // 50 + 20):
        if await redis.set(lease, token, nx=True, px=LEASE_MS):
            break
        await asyncio.sleep(0.05)
    else:
        raise BatchError(f"batch {batch_id}: its lines are being queued by a process that does not let go")
    try:
        state = await _read_state(redis, batch_id)
        if state is None or state.fed_blocks >= state.blocks:
            return False
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.batch_blocks(batch_id))
            pipe.hset(keys.batch(batch_id), "blocks", state.fed_blocks)
            BatchLedger.count_total(pipe, batch_id)
            pipe.srem(keys.windowed_batches(batches.store.queue_name), batch_id)
            await pipe.execute()
        return True
    finally:
        await redis.eval(_RELEASE, 1, lease, token)


async def _read_state(redis: Redis, batch_id: str) -> _State | None:
    fields = await redis.hmget(keys.batch(batch_id), _STATE_FIELDS)
    if fields[4] is None:
        return None
    blocks, block_lines, fed, window = (int(value or 0) for value in fields[:4])
    return _State(blocks, block_lines, fed, window, BlockOptions.from_json(fields[4]))
