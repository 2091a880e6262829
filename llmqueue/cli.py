"""The ``llmqueue`` command: a thin shell over the same functions the Python API offers."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmqueue.errors import LLMQueueError
from llmqueue.settings import Settings, load_settings

app = typer.Typer(
    name="llmqueue",
    help="A Redis job queue for rate-limited LLM calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

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


def _settings(config: Path | None, redis_url: str | None = None, **overrides: Any) -> Settings:
    if redis_url:
        overrides["redis_url"] = redis_url
    return load_settings(config, **overrides)


@app.command()
def worker(
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    max_jobs: Annotated[int | None, typer.Option(help="Concurrent jobs in this process.")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue name.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every job event.")] = False,
) -> None:
    """Run a worker that takes jobs from Redis and calls the provider through LiteLLM."""
    from llmqueue.worker import create_worker

    worker_overrides: dict[str, Any] = {}
    if max_jobs is not None:
        worker_overrides["max_jobs"] = max_jobs
    if queue is not None:
        worker_overrides["queue_name"] = queue
    settings = _settings(config, redis_url, **({"worker": worker_overrides} if worker_overrides else {}))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("llmqueue").setLevel(logging.INFO)
    create_worker(settings, burst=burst).run()


@app.command()
def complete(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[str | None, typer.Option(help="LiteLLM model string (default: [llm] model).")] = None,
    llm_config: Annotated[str | None, typer.Option(help="A named [llm.<name>] group.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Completion token limit.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the result.")] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Queue one chat completion, wait for it, and print the result as JSON."""
    from llmqueue.producer import Producer

    settings = _settings(config, redis_url)
    job: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "model": model}
    if llm_config:
        job["llm_config"] = llm_config
    if max_tokens is not None:
        job["params"] = {"max_tokens": max_tokens}

    async def run() -> str:
        async with Producer(settings) as producer:
            handle = await producer.submit(job)
            result = await handle.result(timeout=timeout)
            return result.model_dump_json(indent=2)

    typer.echo(asyncio.run(run()))


@app.command("simulate-provider")
def simulate_provider(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8900,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    rpm: Annotated[float | None, typer.Option(help="Requests per minute it allows.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute it allows.")] = None,
    latency: Annotated[float, typer.Option(help="Mean seconds per call.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Fraction of calls answered with a 5xx.")] = 0.0,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key.")] = None,
) -> None:
    """Serve a local OpenAI-compatible provider with rate limits and faults (no API key needed)."""
    from llmqueue.provider import ProviderConfig, serve

    serve(
        ProviderConfig(rpm=rpm, tpm=tpm, latency=latency, error_rate=error_rate, api_key=api_key),
        host=host,
        port=port,
    )


def main() -> None:
    """Console entry point: user errors print one clear line, not a traceback."""
    # LiteLLM fetches its price map over the network at import unless told not to; the bundled copy is
    # used unless the user asked otherwise.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        app()
    except LLMQueueError as exc:
        typer.echo(f"llmqueue: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
