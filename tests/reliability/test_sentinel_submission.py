"""Redis Sentinel: the master is killed (SIGKILL) while a batch file is being submitted through the
sentinels, with two workers already running its first lines. The submission waits out the failover
and goes on on the promoted replica; every line it acknowledged runs exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmqueue.batches import blocks, submit
from llmqueue.batches.control import Batches
from llmqueue.settings.worker import BatchConfig
from tests.support.reliability import wait_until
from tests.support.sentinel import run_through_sentinels

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
BATCH = "killed-while-submitting"
KILL_AT_CHUNK = 11
CHUNK = 10


def _batch_file(path: Path, lines: int) -> Path:
    with path.open("w") as out:
        for n in range(lines):
            request = {"custom_id": f"line-{n}", "messages": [{"role": "user", "content": f"line {n}"}]}
            out.write(json.dumps(request) + "\n")
    return path


async def test_lines_acknowledged_before_and_after_the_master_is_killed_mid_submission_run_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, slots = 300, 10
    source = _batch_file(tmp_path / "lines.jsonl", lines)
    # Chunks of 10 lines: 30 acknowledgements, so the kill falls among them (in a chunk's write or its WAIT).
    # The submission queues them all itself: a window as large as the file, stored in blocks of 10 lines.
    monkeypatch.setattr(submit, "_CHUNK", CHUNK)
    monkeypatch.setattr(blocks, "block_lines_for", lambda _window: CHUNK)
    killed: dict[str, Any] = {}
    async with run_through_sentinels(tmp_path, slots=slots) as run:
        servers, provider, workers, producer = run.servers, run.provider, run.workers, run.producer
        batches = Batches(
            producer.store, producer.settings.model_copy(update={"batch": BatchConfig(window=lines)})
        )
        enqueue_chunk = batches._enqueue_chunk
        chunks = 0

        async def enqueue_killing_the_master(*args: Any, **kwargs: Any) -> None:
            """The real chunk submission; the master killed while the 11th is under way (and
            the workers are calling the provider for the first lines)."""
            nonlocal chunks
            chunks += 1
            if chunks != KILL_AT_CHUNK:
                return await enqueue_chunk(*args, **kwargs)
            await wait_until(lambda: provider.stats()["requests"] >= 20, 60, "calls under way")
            under_way = asyncio.ensure_future(enqueue_chunk(*args, **kwargs))
            await asyncio.sleep(0.002)
            killed["in_flight"] = sum(len(w.calling()) for w in workers.all)
            killed["at"] = time.monotonic()
            servers.kill_master()
            return await under_way

        monkeypatch.setattr(batches, "_enqueue_chunk", enqueue_killing_the_master)
        report = await batches.submit_file(source, BATCH)
        submitted_in = time.monotonic() - killed["at"]
        # What `llmqueue run --resume` does: the source file submitted again to the batch.
        monkeypatch.setattr(batches, "_enqueue_chunk", enqueue_chunk)
        resumed = await batches.submit_file(source, BATCH)

        async def batch_done() -> bool:
            return (await batches.status(BATCH)).done

        await wait_until(batch_done, 120, "the batch's end", poll=0.2)
        rows = [row async for row in batches.results(BATCH)]
        status = await batches.status(BATCH)
        new_master = servers.master_port_now()
        stats = provider.stats()

    print(
        f"\nSentinel kill mid-submission: {lines} lines in chunks of {CHUNK}, master killed in chunk "
        f"{KILL_AT_CHUNK} with {killed['in_flight']} calls in flight; submission done {submitted_in:.1f} s "
        f"later ({report.submitted} queued, {report.already_known} already known); resubmission queued "
        f"{resumed.submitted}; {len(rows)} results; provider requests {stats['requests']}; master port "
        f"{run.first_master} -> {new_master}"
    )
    assert new_master == servers.replica_port != run.first_master
    assert chunks == lines // CHUNK
    assert report.submitted + report.already_known == lines and not report.rejected
    assert resumed.submitted == 0  # nothing acknowledged was lost with the old master
    custom_ids = [custom_id for _, custom_id, _ in rows]
    assert sorted(custom_ids) == sorted(f"line-{n}" for n in range(lines))  # each line once
    assert all(result is not None and result.ok for _, _, result in rows)
    assert (status.total, status.succeeded) == (lines, lines)
    # As in the failover during a run: calls in flight at the kill, or claimed in the old master's last
    # moment, may be made again; no line beyond those.
    assert stats["requests"] <= lines + 2 * slots
