"""The suite's output: one rich table per benchmark, and ``results.json`` with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import llmqueue
from bench.figures import figure_text
from bench.harness import REPO_ROOT
from llmqueue.ops.embedded_redis import find_redis_server

MET = {True: "[green]met[/green]", False: "[red]NOT met[/red]", None: ""}


def machine_info() -> dict[str, Any]:
    """Where the figures come from: cores, load, versions, time."""
    return {
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "redis_server": redis_version(),
        "llmqueue": llmqueue_version(),
        "litellm": version("litellm"),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def machine_note(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_cores']} CPU cores, load {info['load_average_at_start'][0]:.2f} at start; Python "
        f"{info['python']}, Redis {info['redis_server']}, llmqueue {info['llmqueue']}, LiteLLM "
        f"{info['litellm']}. Workers, the simulated provider, Redis and this process all run on these "
        "cores and compete for them: absolute figures depend on the machine, compare the ratios."
    )


def redis_version() -> str:
    output = subprocess.run([str(find_redis_server()), "--version"], capture_output=True, text=True).stdout
    for part in output.split():
        if part.startswith("v="):
            return part.removeprefix("v=")
    return output.strip()


def llmqueue_version() -> str:
    if llmqueue.__version__ != "0.0.0":
        return llmqueue.__version__
    # Not installed, run from the source tree: the version the tree declares.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return f"{project['version']} (source tree)"


def table(result: dict[str, Any]) -> Table:
    """A benchmark's rows under its ``columns`` (key → header); targets and met/not-met included."""
    columns: dict[str, str] = result["columns"]
    shown = [key for key in columns if any(key in row for row in result["rows"])]
    out = Table(title=result["title"], caption=result.get("description"), title_justify="left")
    for key in shown:
        out.add_column(
            columns[key], justify="left" if key in ("client", "figure", "workload", "target") else "right"
        )
    for row in result["rows"]:
        out.add_row(*(MET[row.get(key)] if key == "met" else figure_text(key, row.get(key)) for key in shown))
    return out


def print_result(console: Console, result: dict[str, Any]) -> None:
    if "error" in result:
        console.print(f"[bold red]{result['title']}: failed[/bold red]\n{result['error']}")
        return
    console.print(table(result))
    for note in result.get("notes", []):
        console.print(f"  • {note}", highlight=False)
    profile = result.get("profile")
    if profile:
        print_profile(console, profile)
    console.print()


def print_profile(console: Console, profile: dict[str, Any]) -> None:
    console.print(
        f"\n[bold]Profile of one worker[/bold] (pyinstrument, {profile['jobs']} jobs, "
        f"{profile['jobs_per_second_while_profiled']:.0f} jobs/s while profiled, "
        f"{profile['busy_ms_per_job']:.2f} ms busy per job)"
    )
    busy = profile["busy_ms_per_job"]
    # The frames every sample passes through (the CLI, arq's run loop) say nothing: leave them out.
    functions = {name: ms for name, ms in profile["by_function_ms_per_job"].items() if ms < 0.98 * busy}
    for heading, figures in (
        ("self time by package, ms per job", profile["by_package_ms_per_job"]),
        ("inclusive time by function, ms per job", functions),
    ):
        out = Table(title=heading, title_justify="left")
        out.add_column("where")
        out.add_column("ms/job", justify="right")
        for name, value in list(figures.items())[:20]:
            out.add_row(name, f"{value:.3f}")
        console.print(out)
    console.print(profile["text"], highlight=False, markup=False)


def missed_targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per benchmark that failed and per row whose target was not met."""
    missed = []
    for name, result in results.items():
        if "error" in result:
            missed.append(f"{name}: the benchmark failed")
            continue
        for row in result.get("rows", []):
            if row.get("met") is False:
                label = row.get("client") or row.get("figure") or row.get("workload") or ""
                missed.append(f"{name}: {label}: {row.get('target', '')}")
    return missed


def read_benchmarks(path: Path) -> dict[str, Any]:
    """The benchmarks of an earlier results file (none if there is no file), each with its machine note."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        name: {"machine": data.get("machine", {}), **result} for name, result in data["benchmarks"].items()
    }


def write_results(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON, replacing ``path`` only once the whole file is written."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    partial.replace(path)
