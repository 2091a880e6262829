"""``llmqueue limits``: every limit scope the workers have used, as they see it now."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.console import Console

from llmqueue import keys
from llmqueue.cli.common import (
    ConfigOption,
    LiteLLMConfigOption,
    RedisOption,
    app,
    settings_from,
    with_redis,
)
from llmqueue.limits import view
from llmqueue.limits.limiter import RateLimiter
from llmqueue.limits.view import ScopeState


async def scope_states(redis: Any, scopes: list[str] | None = None) -> list[ScopeState]:
    """The state of ``scopes`` (default: every scope seen whose buckets are still kept)."""
    limiter = RateLimiter(redis)
    names = await view.scopes(redis) if scopes is None else scopes
    paused = await paused_scopes(redis)
    found = [await limiter.inspect(scope) for scope in names if await redis.exists(keys.limiter(scope))]
    return [replace(state, paused=state.scope in paused) for state in found]


async def paused_scopes(redis: Any) -> set[str]:
    """The scopes paused now (``llmqueue pause --scope``)."""
    return {scope.decode() for scope in await redis.hkeys(keys.paused_scopes())}


async def batch_limits(redis: Any, batch_id: str) -> list[ScopeState]:
    """The state of the scopes a batch's jobs ran in."""
    return await scope_states(redis, await view.batch_scopes(redis, batch_id))


@app.command()
def limits(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    litellm_config: LiteLLMConfigOption = None,
) -> None:
    """Every limit scope seen: its limits and their source (configured, learnt, both), the level of its
    shared bucket, its cooldown, and the requests and 429s of the last minute. A scope with no limit at
    all shows as "unlimited". With a model_list (--litellm-config or config.toml), each deployment's
    state follows: in service, cooling down after a 429, or taken out after failures."""
    settings = settings_from(config, redis_url, litellm_config=litellm_config)
    states = with_redis(settings, scope_states)
    paused = with_redis(settings, paused_scopes)
    unseen = sorted(paused - {state.scope for state in states})
    if as_json:
        rows = [state.to_json() for state in states]
        rows += [{"scope": scope, "state": "unseen", "paused": True} for scope in unseen]
        typer.echo(json.dumps(rows, indent=2))
        return
    from llmqueue.batches.display import deployments_table, limits_table

    if states:
        Console().print(limits_table(states))
    else:
        typer.echo("no limit scope in use (no worker has taken from the limiter in the last hour)")
    if unseen:
        typer.echo(f"paused (no call starts until `llmqueue resume --scope NAME`): {', '.join(unseen)}")
    if settings.model_list:
        from llmqueue.limits.breaker import deployment_states

        names = [d.name for d in settings.model_list]
        found = with_redis(settings, lambda redis: deployment_states(redis, names))
        model_names = {d.name: d.model_name for d in settings.model_list}
        Console().print(deployments_table(found, model_names))
