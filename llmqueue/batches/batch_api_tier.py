"""``llmqueue run --via batch-api``: the run's side of the Batch API tier (settings, cache, progress)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmqueue import keys
from llmqueue.batches.batch_api import BatchApiRun, FileLimits, check_supported
from llmqueue.batches.control import Batches
from llmqueue.batches.input import LineError, iter_jobs
from llmqueue.batches.options import RunOptions, run_settings, with_workers_llm
from llmqueue.batches.output import write_rejects
from llmqueue.cache import ResponseCache, open_store
from llmqueue.errors import BatchError, LLMQueueError
from llmqueue.llm.classify import short_message
from llmqueue.models import Job
from llmqueue.queue.ledger import BatchStatus
from llmqueue.redaction import redact
from llmqueue.settings import Settings


class BatchApiTier:
    """One ``run --via batch-api``: checks what it can before anything starts, then runs the batch."""

    def __init__(self, options: RunOptions, settings: Settings, batch_id: str, use_cache: bool) -> None:
        self.options = options
        self.batch_id = batch_id
        self.use_cache = use_cache
        # The tier runs in this process: it needs the settings run gives its workers in their environment.
        self.settings = with_workers_llm(
            run_settings(settings, model=options.model, rpm=None, tpm=None), options.worker_env
        )
        if options.file is not None and not options.resume:
            check_supported(self._jobs(options.file), self.settings.llm_for(options.llm_config))

    def _jobs(self, source: Path) -> list[Job]:
        return self._read(source)[0]

    def _read(self, source: Path) -> tuple[list[Job], list[LineError]]:
        """The file's jobs, and the lines rejected (``--skip-invalid`` lets the run go on without them)."""
        jobs: list[Job] = []
        rejected: list[LineError] = []
        for item in iter_jobs(
            source,
            batch_id=self.batch_id,
            default_model=self.options.model,
            llm_config=self.options.llm_config,
        ):
            if isinstance(item, Job):
                item.cache = self.use_cache
                jobs.append(item)
            else:
                rejected.append(item)
        return jobs, rejected

    def _provider_failed(self, exc: Exception) -> BatchError:
        """The error a provider's failure ends the run with: what it said, and how to go on."""
        llm = self.settings.llm_for(self.options.llm_config)
        secrets = [llm.api_key.get_secret_value()] if llm.api_key else []
        said = short_message(redact(f"{type(exc).__name__}: {exc}", secrets)).replace("\n", " ")
        return BatchError(
            f"batch {self.batch_id}: the provider's Batch API failed ({said}); the lines answered so far "
            f"are kept: go on with `llmqueue run --resume {self.batch_id} --via batch-api`"
        )

    async def run(self, batches: Batches, source: Path, console: Console) -> BatchStatus:
        jobs, rejected = self._read(source)
        if rejected:  # as a live run does: the rejected lines go to --rejects
            path = self.options.rejects or self.options.output.with_suffix(".rejected.jsonl")
            write_rejects(rejected, path)
            console.print(f"{len(rejected)} line(s) rejected, written to {path}")
        await batches.register(self.batch_id, jobs, source=source)
        await batches.redis.hset(keys.batch(self.batch_id), "via", "batch-api")
        console.print(f"batch [bold]{self.batch_id}[/bold]: {len(jobs)} line(s) for the provider's Batch API")
        cache = None
        if self.use_cache:
            llm = self.settings.llm_for(self.options.llm_config)
            cache = ResponseCache(
                open_store(self.settings.cache, batches.redis), batches.redis, claim_seconds=llm.timeout + 30
            )
        progress = Progress(
            TextColumn("[bold]lines via the provider's Batch API"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        # The batch's lines from the start (a resumed batch is not at 0/? until its next poll): those
        # not sent in a round have their results already, or from the cache.
        finished = (await batches.status(self.batch_id)).finished
        task = progress.add_task("provider", total=len(jobs), completed=finished)
        try:
            with progress:
                tier = BatchApiRun(
                    batches,
                    self.settings,
                    cache=cache,
                    poll_interval=self.options.poll_interval,
                    on_progress=lambda done, sent: progress.update(task, completed=len(jobs) - sent + done),
                    fallback_live=self.options.fallback == "live",
                    limits=FileLimits(max_tokens=self.options.enqueued_token_limit),
                )
                try:
                    await tier.run(self.batch_id, jobs, self.options.llm_config)
                except LLMQueueError:
                    raise
                except Exception as exc:  # the provider's (or LiteLLM's) error: one line, resumable
                    raise self._provider_failed(exc) from None
                progress.update(task, completed=(await batches.status(self.batch_id)).finished)
        finally:
            if cache is not None:
                await cache.close()
        return await batches.status(self.batch_id)
