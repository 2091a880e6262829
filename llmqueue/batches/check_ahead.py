"""Checking a big file while its first lines already run.

``llmqueue run`` checks every line of a file before it queues any (a bad line stops the run before
anything is paid). That takes about a second per 60 MB here, so a file larger than ``[batch]
check_first_bytes`` (64 MiB) is instead checked in a thread while the run goes on: the run feeds no line the
check has not passed, and stops at the first bad line the check finds, with the answers it has kept
for the lines before it, to be resumed once the file is fixed. The lines the run paid for are valid
lines whose answers it keeps; what it gives up is refusing the whole file before the first call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from llmqueue.batches.input import FileCheck, Refuser, bad_lines_text, check_file
from llmqueue.errors import LLMQueueError, RunStoppedError

HEAD_LINES = 1000
"""Request lines checked before the run begins: their models are those the budgets' checks see first."""

__all__ = ["HEAD_LINES", "CheckAhead", "checks_ahead"]


def checks_ahead(path: Path, check_first_bytes: int) -> bool:
    """Whether a new run of ``path`` checks it ahead of its feeding rather than whole first."""
    return path.stat().st_size > check_first_bytes


class CheckAhead:
    """``check_file`` of ``path`` in a thread; ``checked_through()`` is how far the run may feed."""

    def __init__(
        self,
        path: Path,
        *,
        batch_id: str,
        default_model: str | None,
        llm_config: str | None,
        refuse: Refuser | None,
    ) -> None:
        self.path = path
        self.check = FileCheck()
        self.unreadable: LLMQueueError | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(batch_id, default_model, llm_config, refuse),
            name="llmqueue-check-ahead",
            daemon=True,  # an interrupted run does not wait for the rest of its file to be read
        )

    def start(self) -> CheckAhead:
        self._thread.start()
        return self

    def _run(
        self, batch_id: str, default_model: str | None, llm_config: str | None, refuse: Refuser | None
    ) -> None:
        try:
            check_file(
                self.path,
                batch_id=batch_id,
                default_model=default_model,
                llm_config=llm_config,
                refuse=refuse,
                into=self.check,
            )
        except LLMQueueError as exc:  # a line that is not UTF-8, a file gone
            self.unreadable = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def failed(self) -> bool:
        """A bad line (or an unreadable part) was found: the run feeds nothing more."""
        return self.check.error_count > 0 or self.unreadable is not None

    def checked_through(self) -> float:
        """The last line number the run may feed: every line up to it is checked and valid."""
        if self.check.errors:
            return self.check.errors[0].line - 1
        if self.done and self.unreadable is None:
            return float("inf")
        return self.check.checked_through

    def wait_for_head(self) -> FileCheck:
        """Block until the first ``HEAD_LINES`` request lines are checked (or the whole file, or a bad
        line); returns a copy of the check so far (the thread goes on filling its own)."""
        while not self.done and not self.failed and self.check.lines < HEAD_LINES:
            time.sleep(0.002)
        return FileCheck(
            lines=self.check.lines,
            valid=self.check.valid,
            error_count=self.check.error_count,
            errors=list(self.check.errors),
            samples=dict(self.check.samples),  # one C-level copy: the thread cannot change it midway
            checked_through=self.check.checked_through,
        )

    async def stop_error(self, batch_id: str, fed: int) -> LLMQueueError:
        """The error a run stopped by this check ends with, once the whole file is read (every bad line
        is then named, as the check before a run names them)."""
        await asyncio.to_thread(self._done.wait)
        if self.unreadable is not None and self.check.error_count == 0:
            return self.unreadable
        return RunStoppedError(
            f"{self.path}: {self.check.error_count} of {self.check.lines} line(s) are invalid. The file "
            f"is large, so it was checked while its first lines ran: the run stopped before the first "
            f"bad line; the {fed} line(s) it had queued stay in the batch, and those answered are not "
            f"sent again. Fix the file and resume with: {RunStoppedError.resume_here()} (add "
            f"--skip-invalid to leave the bad lines out):\n{bad_lines_text(self.check)}",
            batch_id,
        )

    def join(self) -> FileCheck:
        """Wait for the whole file to be checked; its check."""
        self._done.wait()
        return self.check
