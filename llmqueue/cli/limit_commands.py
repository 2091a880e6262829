"""``llmqueue limits``: every limit scope the workers have used, as they see it now."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from llmqueue.cli.common import ConfigOption, RedisOption, app, settings_from, with_redis
from llmqueue.limits.limiter import RateLimiter, ScopeState


async def scope_states(redis: Any, scopes: list[str] | None = None) -> list[ScopeState]:
    """The state of ``scopes`` (default: every scope seen whose buckets are still kept)."""
    limiter = RateLimiter(redis)
    names = await limiter.scopes() if scopes is None else scopes
    states = []
    for scope in names:
        if await limiter.exists(scope):
            states.append(await limiter.inspect(scope))
    return states


async def batch_limits(redis: Any, batch_id: str) -> list[ScopeState]:
    """The state of the scopes a batch's jobs ran in."""
    return await scope_states(redis, await RateLimiter(redis).batch_scopes(batch_id))


@app.command()
def limits(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Every limit scope seen: its limits and their source (configured, learnt, both), the level of its
    shared bucket, its cooldown, and the requests and 429s of the last minute. A scope with no limit at
    all shows as "unlimited"."""
    settings = settings_from(config, redis_url)
    states = with_redis(settings, scope_states)
    if as_json:
        typer.echo(json.dumps([state.to_json() for state in states], indent=2))
        return
    if not states:
        typer.echo("no limit scope in use (no worker has taken from the limiter in the last hour)")
        return
    from llmqueue.ops.display import limits_table

    Console().print(limits_table(states))
