"""Benchmark: a million lines answered end to end (issue 29). The same 1,000,000-line file of ~1 KB
prompts as ``bench.million`` through ``llmqueue run`` against the simulated provider with no limit, run
to its end rather than watched for a while: Redis's peak memory and the run's peak RSS over the whole
run, every line sent to the provider once and answered once, the output in input order.

It takes about an hour of a quiet 2-core machine, so it is its own benchmark, run on purpose
(``python -m bench --only million-whole``); ``--quick`` runs 50,000 lines the same way.
"""

from __future__ import annotations

from typing import Any

from bench.big_file import big_file_rows, run_big_file

FULL_LINES = 1_000_000
QUICK_LINES = 50_000
FIRST_REQUEST_TARGET = 3.0  # seconds, issue 29
WHOLE_RUN = float("inf")  # watched until the run ends

COLUMNS = {"figure": "figure", "value": "value", "unit": "unit", "target": "target", "met": "met"}


def run(quick: bool) -> dict[str, Any]:
    lines = QUICK_LINES if quick else FULL_LINES
    big = run_big_file(lines, WHOLE_RUN)
    rows: list[dict[str, Any]] = [
        *big_file_rows(big, "run", first_request_target=FIRST_REQUEST_TARGET, observed=WHOLE_RUN),
        {"figure": "  the whole run", "value": big["observed_seconds"] / 60, "unit": "min"},
        {"figure": "  provider requests", "value": big["provider_requests"], "unit": "requests"},
    ]
    return {
        "title": "A million lines, end to end",
        "description": "llmqueue run of a 1 KB-prompt file to its end, 2 workers, a 10 ms provider with no "
        "limit, a private Redis",
        "params": {"lines": lines},
        "columns": COLUMNS,
        "rows": rows,
        "big_file": big,
        "notes": [
            "every line once: the provider received exactly one request per line and the output holds "
            "each custom_id once, in input order",
            "peak Redis memory: the private server's used_memory_peak (and used_memory sampled every 50 ms) "
            "above its empty used_memory, over the whole run",
        ],
    }
