"""``llmqueue results --collect``: a submitted batch's results written to a file in input order as they
finish, and each job's keys dropped from Redis once its line is in the file.

It is the run command's writer (``llmqueue.batches.ordered_output.OrderedWriter``) over a batch that
``llmqueue submit`` or code queued: memory stays bounded whatever the batch's size, and a collection
stopped and started again with the same output goes on from its ``.partial`` file, nothing written twice
or lost. The batch's hash records the file (``collected_to``) beside the writer's ``written`` count, so
that a plain ``llmqueue results`` says where the lines went instead of writing them as missing, and
``llmqueue status`` keeps its counts (they are the batch's totals, not its jobs' keys).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from llmqueue import keys
from llmqueue.batches.control import Batches
from llmqueue.batches.ordered_output import OrderedWriter
from llmqueue.batches.run_lock import RedisRunLock
from llmqueue.errors import BatchError
from llmqueue.queue.ledger import BatchStatus

COLLECTED_TO = "collected_to"
"""The batch hash's field naming the file ``--collect`` writes the batch to (an absolute path)."""

__all__ = ["COLLECTED_TO", "collect", "written_out"]


async def collect(
    batches: Batches,
    batch_id: str,
    output: Path,
    *,
    on_progress: Callable[[BatchStatus], None] | None = None,
    on_stall: Callable[[str], None] | None = None,
    interval: float = 0.5,
) -> OrderedWriter:
    """Write the batch's results to ``output`` in input order as they come, until the batch is done;
    returns the writer (its ``failures`` and ``failure_count``). ``on_progress`` and ``on_stall`` are
    called as ``Batches.wait`` calls them.

    Raises BatchError for an unknown batch, a batch ``llmqueue run`` writes, one collected to another
    file or collected whole already; BatchBusyError while another process writes it.
    """
    await batches.status(batch_id)
    lock = RedisRunLock(batches.redis, batch_id, doing=("collected", "llmqueue results --collect"))
    await lock.acquire()
    try:
        await _claim(batches.redis, batch_id, output)
        writer = OrderedWriter(batches.store, batch_id, output)
        await writer.open()
        complete = False
        try:
            async for status in batches.follow(batch_id, interval, on_stall):
                await writer.drain()
                await lock.refresh()
                if on_progress is not None:
                    on_progress(status)
            await writer.drain(final=True)
            complete = True
        finally:
            writer.close(complete=complete)
        return writer
    finally:
        await lock.release()


async def written_out(redis: Redis, batch_id: str) -> str | None:
    """Why the batch's results cannot be read from Redis whole: its first lines were written to a file
    and dropped (``--collect``, or ``llmqueue run``). None when none was."""
    collected_to, written, listed = await _progress(redis, batch_id)
    if not written:
        return None
    if collected_to is None:
        return (
            f"batch {batch_id}: its first {written} result(s) were written to the output of `llmqueue run` "
            "and are no longer in Redis"
        )
    left = (
        ""
        if written >= listed
        else f"; `llmqueue results {batch_id} -o {collected_to} --collect` writes the rest there"
    )
    return (
        f"batch {batch_id} was collected to {collected_to} (`llmqueue results --collect`): its first "
        f"{written} result(s) are in that file and no longer in Redis{left}"
    )


async def _claim(redis: Redis, batch_id: str, output: Path) -> None:
    """Record ``output`` as the file the batch is collected to, unless it is written somewhere else."""
    target = str(output.resolve())
    collected_to, written, listed = await _progress(redis, batch_id)
    if written and collected_to is None:
        raise BatchError(
            f"batch {batch_id} is written to its output by `llmqueue run` ({written} result(s) so far): "
            f"resume that run (`llmqueue run --resume {batch_id}`) instead of collecting it"
        )
    if collected_to is not None and collected_to != target:
        raise BatchError(
            f"batch {batch_id} is collected to {collected_to} ({written} result(s) written there and "
            f"dropped from Redis): give -o {collected_to} to go on"
        )
    if written and written >= listed and output.exists():
        raise BatchError(
            f"batch {batch_id} was collected to {output} already: all {written} result(s) are in it"
        )
    await redis.hset(keys.batch(batch_id), COLLECTED_TO, target)


async def _progress(redis: Redis, batch_id: str) -> tuple[str | None, int, int]:
    """The batch's ``collected_to``, how many jobs are written out, and how many it lists."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.batch(batch_id), [COLLECTED_TO, "written"])
        pipe.zcard(keys.batch_jobs(batch_id))
        (collected_to, written), listed = await pipe.execute()
    return (collected_to.decode() if collected_to else None), int(written or 0), int(listed)
