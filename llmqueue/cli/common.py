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
from llmqueue.ops.redaction import redis_error_line
from llmqueue.settings import Settings, load_settings

app = typer.Typer(
    name="llmqueue",
    help="A Redis job queue for rate-limited LLM calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
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
RedisOption = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (default: REDIS_URL or the config file).")
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help=r"LiteLLM model for lines that name none (default: \[llm] model)."),
]
LLMConfigOption = Annotated[str | None, typer.Option("--llm-config", help=r"A named \[llm.<name>] group.")]
BatchArgument = Annotated[str, typer.Argument(help="The batch id (printed by submit/run).")]


class LogFormatChoice(StrEnum):
    """``llmqueue worker --log-format``."""

    text = "text"
    json = "json"


def settings_from(config: Path | None, redis_url: str | None = None, **overrides: Any) -> Settings:
    if redis_url:
        overrides["redis_url"] = redis_url
    return load_settings(config, **overrides)


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
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from llmqueue.errors import RedisUnavailableError
    from llmqueue.ops.redaction import redact_url

    url = settings.redis_url.get_secret_value()

    async def go() -> T:
        client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
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
