"""Benchmark: batches of millions (issue 29). A 1,000,000-line file of ~1 KB prompts through
``llmqueue run`` against the simulated provider with no limit (``bench.big_file``): the first provider
request, the run's peak RSS and Redis's peak memory while it is watched, and what the run process
spends feeding the window per line; then a file killed (SIGKILL) part way and resumed: every line
answered once, in input order, and no more calls sent twice than the window held.

The whole million is not answered in the benchmark: at the rate this 2-core machine answers lines
(its figure is printed), that alone would take about an hour. The run is watched for ``observe``
seconds after its first request, and the whole run's time is projected from the rate.
"""

from __future__ import annotations

import random
from typing import Any

from bench.big_file import big_file_rows, kill_and_resume, run_big_file
from llmqueue.batches.window import window_size
from llmqueue.settings import Settings

FULL: dict[str, Any] = {"lines": 1_000_000, "observe": 120.0, "resume_lines": 20_000}
QUICK: dict[str, Any] = {"lines": 50_000, "observe": 20.0, "resume_lines": 2_000}
FIRST_REQUEST_TARGET = 3.0  # seconds
SEED = 29
RUN_WORKERS = 2  # llmqueue run's default --workers, which bench.big_file uses

COLUMNS = {"figure": "figure", "value": "value", "unit": "unit", "target": "target", "met": "met"}


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    big = run_big_file(sizes["lines"], sizes["observe"])
    kill_after = random.Random(SEED).randint(sizes["resume_lines"] // 10, sizes["resume_lines"] * 9 // 10)
    resumed = kill_and_resume(sizes["resume_lines"], kill_after)
    window = _default_window()
    rows: list[dict[str, Any]] = [
        *big_file_rows(big, "run", first_request_target=FIRST_REQUEST_TARGET, observed=sizes["observe"]),
        {
            "figure": "  the whole file at that rate (projected, not run)",
            "value": big["lines"] / max(big["lines_per_second"], 1e-9) / 60,
            "unit": "min",
        },
        {
            "figure": f"{resumed['lines']:,} lines, run killed after {resumed['killed_after_answers']:,} "
            "answers, then resumed: every line once, in input order",
            "value": "yes" if resumed["each_once_in_order"] else "NO",
            "unit": "",
            "target": "yes",
            "met": resumed["each_once_in_order"],
        },
        {
            "figure": "  calls sent twice",
            "value": resumed["sent_twice"],
            "unit": "calls",
            "target": "≤ the jobs in flight at the kill",
            "met": 0 <= resumed["sent_twice"] <= resumed["claimed_at_kill"],
        },
        {
            "figure": "  jobs in flight at the kill (held by the workers)",
            "value": resumed["claimed_at_kill"],
            "unit": "jobs",
        },
        {"figure": "  the run's window (what it keeps unfinished in Redis)", "value": window, "unit": "jobs"},
        {
            "figure": "  calls in flight at the provider when killed",
            "value": resumed["in_flight_at_kill"],
            "unit": "calls",
        },
        {
            "figure": "  lines in the output before the resume",
            "value": resumed["written_before_resume"],
            "unit": "lines",
        },
    ]
    return {
        "title": "Batches of millions",
        "description": "llmqueue run of a 1 KB-prompt file, 2 workers, a 10 ms provider with no limit, "
        "a private Redis",
        "params": {**sizes, "kill_after": kill_after, "seed": SEED},
        "columns": COLUMNS,
        "rows": rows,
        "big_file": big,
        "kill_and_resume": resumed,
        "notes": [
            f"the run is watched until {sizes['observe']:.0f} s after its first request, then interrupted; "
            "the whole file's time is projected from the rate of answers seen",
            "first request: from the run's start, including the up-front check of every line (a bad "
            "line stops the run before anything is queued and paid)",
            "killed and resumed: SIGKILL of the run process once the provider has answered the given "
            "number of lines (drawn at random with a fixed seed), then llmqueue run --resume; calls sent "
            "twice = provider requests minus lines",
        ],
    }


def _default_window() -> int:
    """The window of a run of the default workers and no rate: what a kill can leave unfinished."""
    return window_size(rpm=None, slots=RUN_WORKERS * Settings().worker.max_jobs)
