"""Scenario 7: the API key, a password in a base URL and the Redis password never reach Redis or a log
line, with LiteLLM's debug logging on, in both log formats, including provider error messages that quote
the key and the URL.

LiteLLM's OpenAI client cannot call a base URL that carries credentials (with its aiohttp transport the
request is never sent: "Connection error"; with httpx, the URL's Basic auth replaces the Bearer key).
So the successful calls go to a plain base URL, and a named group ``[llm.relay]`` points at the same
provider through ``http://relay:<password>@…``: its calls fail, and their errors are logged and stored.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from llmqueue.ops.embedded_redis import EmbeddedRedis
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.redis_dump import everything_in
from tests.support.reliability import chat_jobs, wait_for_results, worker_env, worker_processes
from tests.support.settings import make_settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

API_KEY = secrets.token_hex(
    16
)  # no "sk-" prefix (Azure keys have none): only the configured secret gives it away
URL_PASSWORD = f"s3cretpw{secrets.token_hex(8)}"
REDIS_PASSWORD = f"redispw{secrets.token_hex(8)}"


async def test_keys_and_passwords_never_reach_redis_or_the_logs(tmp_path: Path) -> None:
    jobs = 10
    with (
        EmbeddedRedis(password=REDIS_PASSWORD) as server,
        ProviderProcess(ProviderConfig(api_key=API_KEY)) as provider,
    ):
        parts = urlsplit(provider.base_url)
        relay_url = f"{parts.scheme}://relay:{URL_PASSWORD}@{parts.netloc}{parts.path}"
        (tmp_path / "config.toml").write_text(f'[llm.relay]\nbase_url = "{relay_url}"\nnum_retries = 0\n')
        env = {
            **worker_env(server.url, provider.base_url, API_KEY, llm_num_retries=1, llm_retry_min_wait=0.2),
            "LITELLM_LOG": "DEBUG",
        }
        settings = make_settings(server.url, provider.base_url, api_key=API_KEY)
        with worker_processes(env, tmp_path) as workers:
            text_log, json_log = await asyncio.gather(
                workers.start_ready(1, litellm_debug=True),
                workers.start_ready(1, ["--log-format", "json"], litellm_debug=True),
            )
            async with Producer(settings) as producer:
                ok = await producer.submit_many(chat_jobs(jobs, "secret"))
                relayed = await producer.submit_many(chat_jobs(4, "relayed", llm_config="relay"))
                await wait_for_results(producer.redis, [h.job_id for h in [*ok, *relayed]], 60)
                # Error messages that quote the key and the password URL: permanent (401) and retried (500).
                quoted = f"Incorrect API key provided: {API_KEY} (via {relay_url})"
                provider.control("fail_next", count=4, status=401, message=quoted)
                provider.control(
                    "fail_next", count=8, status=500, message=f"upstream failed for key {API_KEY}"
                )
                failing = await producer.submit_many(chat_jobs(8, "leaky"))
                results = await wait_for_results(producer.redis, [h.job_id for h in [*relayed, *failing]], 60)
                await asyncio.sleep(0.5)  # the last log lines
                stored = await everything_in(producer.redis)
            logs = {w.name: w.output() for w in workers.all}
            assert text_log[0].alive and json_log[0].alive
        stats = provider.stats()

    kinds = sorted({e.kind for r in results.values() for e in r.errors})
    log_lines = sum(len(text.splitlines()) for text in logs.values())
    debug_lines = sum(text.count("DEBUG") for text in logs.values())
    found = {
        name: [where for where, text in [("redis", stored), *logs.items()] if value in text]
        for name, value in [
            ("API key", API_KEY),
            ("URL password", URL_PASSWORD),
            ("Redis password", REDIS_PASSWORD),
        ]
    }
    print(
        f"\nsecrets: {stats['succeeded']} calls succeeded, then 401s and 500s quoting the key and the "
        f"password URL, and calls through the password URL (error kinds {kinds}); scanned "
        f"{len(stored) // 1024} KiB of Redis keys and values and {log_lines} log lines "
        f"({debug_lines} at DEBUG) of a text and a JSON worker: found {found}"
    )
    assert stats["succeeded"] == jobs  # the key reached the provider: it was used, not dropped
    assert {"auth", "server_error"} <= set(kinds)
    assert any("***" in e.message for r in results.values() for e in r.errors)
    assert debug_lines > 0  # LiteLLM's debug logging was on
    assert found == {"API key": [], "URL password": [], "Redis password": []}
