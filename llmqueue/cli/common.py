"""What every ``llmqueue`` command shares: the app, its common options, settings and Redis helpers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape

from llmqueue.errors import LLMQueueError
from llmqueue.redaction import redis_error_line
from llmqueue.settings import Settings, load_settings

app = typer.Typer(
    name="llmqueue",
    help="A Redis job queue for rate-limited LLM calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Messages are not wrapped at the terminal's width: a file path in one must survive a copy and paste.
console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="LLMQUEUE_CONFIG",
        help="config.toml to read (default: ./config.toml when present).",
        dir_okay=False,
    ),
]
LiteLLMConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--litellm-config",
        envvar="LLMQUEUE_LITELLM_CONFIG",
        help="A LiteLLM proxy config.yaml whose model_list (deployments, fallbacks) to use.",
        dir_okay=False,
    ),
]
RedisOption = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (default: REDIS_URL or the config file).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help=r"LiteLLM model for chat lines that name none (default: \[llm] model); embedding lines take "
        r"\[llm] embedding_model.",
    ),
]
LLMConfigOption = Annotated[str | None, typer.Option("--llm-config", help=r"A named \[llm.<name>] group.")]
NoCacheOption = Annotated[
    bool,
    typer.Option("--no-cache", help="Call the provider for every line; neither read nor fill the cache."),
]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help=r"Response cache directory (default: \[cache] dir or $XDG_CACHE_HOME/llmqueue)."
    ),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check the file, print per model lines, cache hits, tokens, cost range and time; run nothing.",
    ),
]
BatchArgument = Annotated[str, typer.Argument(help="The batch id (printed by submit/run).")]
BatchIdOption = Annotated[
    str | None, typer.Option("--batch", help="Batch id (default: the file name, the time, a random part).")
]
MaxCostOption = Annotated[float | None, typer.Option(help="Stop starting jobs once the batch spent USD.")]
MaxTokensOption = Annotated[int | None, typer.Option(help="Stop starting jobs after this many tokens.")]
SkipInvalidOption = Annotated[
    bool, typer.Option("--skip-invalid", help="Take the valid lines only; write rejected ones to --rejects.")
]
RejectsOption = Annotated[Path | None, typer.Option(help="Where --skip-invalid writes rejected lines.")]
PollIntervalOption = Annotated[
    float, typer.Option(help="--via batch-api: seconds between looks at the provider's batches.")
]
EnqueuedTokenLimitOption = Annotated[
    int | None,
    typer.Option(
        help="--via batch-api: the provider's enqueued-token limit per model; files are paced to it."
    ),
]


def _priority(value: str) -> int:
    from llmqueue.models import parse_priority

    try:
        return parse_priority(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


PriorityOption = Annotated[
    int,
    typer.Option(
        "--priority",
        parser=_priority,
        metavar="NAME|0-9",
        help="Priority of lines that set none: batch (0, default), default (1), interactive (2) or 0-9; "
        "higher runs first.",
    ),
]
WeightOption = Annotated[
    float,
    typer.Option(
        "--weight", min=0.001, help="The batch's share against other batches of its priority (default 1)."
    ),
]


class LogFormatChoice(StrEnum):
    """``llmqueue worker --log-format``."""

    text = "text"
    json = "json"


def settings_from(
    config: Path | None,
    redis_url: str | None = None,
    *,
    litellm_config: Path | None = None,
    **overrides: Any,
) -> Settings:
    if redis_url:
        overrides["redis_url"] = redis_url
    return load_settings(config, litellm_config=litellm_config, **overrides)


def require_positive(**values: float | None) -> None:
    """A flag given zero, a negative number or NaN (``--rpm -5``) is an error naming it, before anything
    starts: the settings it becomes would refuse it later, in a worker's log, or (a budget) cancel
    every job."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise LLMQueueError(f"--{name.replace('_', '-')} must be above 0, got {value:g}")


def with_cache_dir(settings: Settings, cache_dir: Path | None) -> Settings:
    """``settings`` with ``--cache-dir`` (when given) in place of ``[cache] dir``."""
    if cache_dir is not None:
        settings.cache = settings.cache.model_copy(update={"dir": cache_dir})
    return settings


def print_estimate(
    file: Path,
    settings: Settings,
    *,
    model: str | None,
    llm_config: str | None,
    use_cache: bool,
    max_cost: float | None = None,
) -> None:
    """``--dry-run``: the estimate table on stdout, compared with ``max_cost`` (or ``[batch] max_cost``);
    a bad file, or a line a submission would refuse, raises (exit 2) before anything else."""
    from llmqueue.batches.display import estimate_text
    from llmqueue.batches.estimate import estimate_file

    estimate = asyncio.run(
        estimate_file(file, settings, default_model=model, llm_config=llm_config, use_cache=use_cache)
    )
    cap = max_cost if max_cost is not None else settings.batch.max_cost
    typer.echo(estimate_text(estimate, str(file), max_cost=cap))


def unresolved_deployments(settings: Settings) -> str | None:
    """Why workers started from this process's environment could not start the settings' model_list
    deployments (an ``os.environ/`` variable not set), or None."""
    if not settings.model_list:
        return None
    from llmqueue.model_list import resolve

    try:
        resolve(settings.model_list, os.environ)
    except LLMQueueError as exc:
        return str(exc)
    return None


def with_batches(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(batches)`` against the settings' Redis."""
    from llmqueue.batches.control import Batches
    from llmqueue.producer import Producer

    async def go() -> T:
        async with Producer(settings) as producer:
            return await action(Batches(producer.store, producer.settings))

    return asyncio.run(go())


def with_redis(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(redis)`` with a client on the settings' Redis; unreachable Redis is a clear error."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from llmqueue.connection import redis_client
    from llmqueue.errors import RedisUnavailableError
    from llmqueue.redaction import redact_url

    url = settings.redis_url.get_secret_value()

    async def go() -> T:
        client = redis_client(url, socket_connect_timeout=5, socket_timeout=10)
        try:
            return await action(client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailableError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
        finally:
            await client.aclose()

    return asyncio.run(go())


def main() -> None:
    """Console entry point: user errors print one clear line, not a traceback."""
    # LiteLLM fetches its price map over the network at import unless told not to; the bundled copy is
    # used unless the user asked otherwise.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        app()
    except LLMQueueError as exc:
        console.print(f"[red]llmqueue:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except RedisError as exc:
        console.print(f"[red]llmqueue:[/red] Redis error: {escape(redis_error_line(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
