"""The two tiers of ``run`` and ``submit``: ``--via live`` (workers) and ``--via batch-api``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from llmqueue.cli.common import console, with_batches
from llmqueue.errors import LLMQueueError


class Via(StrEnum):
    """``llmqueue run --via``."""

    live = "live"
    batch_api = "batch-api"


def check_tier_options(
    via: Via,
    fallback: Via,
    poll_interval: float,
    enqueued_token_limit: int | None,
    *live_only: float | None,
) -> None:
    """Options of one tier given to the other: an error, or a warning where the run can still go on."""
    if via is Via.live:
        if fallback is Via.live or poll_interval != 10.0 or enqueued_token_limit is not None:
            raise LLMQueueError(
                "--fallback, --poll-interval and --enqueued-token-limit apply to --via batch-api"
            )
        return
    rpm, tpm, concurrency, max_cost, max_tokens = live_only
    if fallback is not Via.live and any(value is not None for value in (rpm, tpm, concurrency)):
        console.print(
            "[yellow]warning:[/yellow] --rpm, --tpm and --concurrency limit live calls only; "
            "with --via batch-api they apply to nothing unless --fallback live"
        )
    if max_cost is not None or max_tokens is not None:
        console.print(
            "[yellow]warning:[/yellow] --max-cost and --max-tokens are not enforced with "
            "--via batch-api: the provider runs each batch whole; see its cost first with --dry-run"
        )


def submit_via_batch_api(
    file: Path,
    batch_id: str,
    settings: Any,
    model: str | None,
    llm_config: str | None,
    use_cache: bool,
    poll_interval: float,
    enqueued_token_limit: int | None,
) -> None:
    from llmqueue.ops.collector import collector_paused

    with collector_paused():
        from llmqueue.batches.batch_api_tier import BatchApiTier  # imports LiteLLM
    from llmqueue.batches.input import check_file, invalid_file_error
    from llmqueue.batches.options import RunOptions

    check = check_file(file, batch_id=batch_id, default_model=model, llm_config=llm_config)
    if not check.ok:
        raise invalid_file_error(check, file)
    options = RunOptions(
        file=file,
        output=Path(),
        model=model,
        llm_config=llm_config,
        via="batch-api",
        poll_interval=poll_interval,
        enqueued_token_limit=enqueued_token_limit,
    )
    tier = BatchApiTier(options, settings, batch_id, use_cache and settings.cache.enabled)
    status = with_batches(settings, lambda b: tier.run(b, file, console))
    console.print(
        f"{status.succeeded}/{status.total} succeeded, {status.failed} failed, {status.cancelled} cancelled "
        f"via the Batch API; write them with: llmqueue results {batch_id} -o FILE"
    )
