"""``python -m bench [--only NAME ...] [--quick] [--profile]``: run the benchmarks, print a table per
benchmark and write ``bench/results.json``. Exits 1 when a benchmark failed or missed a target (each
one is listed at the end), 0 when every target was met."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import report

# Name → module; each module's ``run(quick)`` returns its figures.
BENCHMARKS = {
    "ratelimit": "bench.ratelimit",
    "limits": "bench.limits",
    "alternatives": "bench.alternatives",
    "overhead": "bench.overhead",
    "latency": "bench.latency",
    "scale": "bench.scale",
    "million": "bench.million",
    "million-whole": "bench.million_whole",
    "economics": "bench.economics",
    "priority": "bench.priority",
    "startup": "bench.startup",
    "deployments": "bench.deployments",
    "streaming": "bench.streaming",
    "dashboard": "bench.dashboard_open",
}
EXTRA_MODULES = ("tenacity", "pyinstrument")  # llmqueue[bench]
RESULTS = Path(__file__).resolve().parent / "results.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a smoke run (a few minutes, mostly processes starting)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="overhead: also run one worker under pyinstrument"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default: {RESULTS})")
    options = parser.parse_args(argv)
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} not installed: pip install -e '.[bench]'")

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or pipe: wide enough for the tables
    machine = report.machine_info()
    console.print(report.machine_note(machine), highlight=False)
    console.print()
    results: dict[str, Any] = {}
    started = time.monotonic()
    for name in options.only or BENCHMARKS:
        console.rule(name)
        began = time.monotonic()
        try:
            module = importlib.import_module(BENCHMARKS[name])
            if name == "overhead":
                result = module.run(options.quick, profile=options.profile)
            else:
                result = module.run(options.quick)
        except Exception:
            result = {"title": name, "error": traceback.format_exc()}
        result["seconds"] = time.monotonic() - began
        results[name] = result
        report.print_result(console, result)
    machine["total_seconds"] = time.monotonic() - started
    for result in results.values():
        result["machine"] = machine
    # A run of a few (--only) keeps the other benchmarks' latest figures, each with its own machine note.
    kept = report.read_benchmarks(options.output) if options.only else {}
    report.write_results(
        options.output,
        {
            "machine": machine,
            "options": {"quick": options.quick, "profile": options.profile},
            "benchmarks": {**kept, **results},
        },
    )
    console.print(f"results written to {options.output} ({machine['total_seconds']:.0f} s)")
    missed = report.missed_targets(results)
    for line in missed:
        console.print(f"[bold red]target NOT met[/bold red] {line}", highlight=False)
    if not missed:
        console.print("every target met")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
