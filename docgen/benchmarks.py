"""The benchmarks page, rendered from ``bench/results.json`` (written by ``python -m bench``).

Each benchmark: what it measures, its parameters, its rows with their targets, its notes, and the
machine and time of the run that produced them. The page shows the file as it is at build time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.figures import figure_text
from docgen.markdown import cell, code, table

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results.json"
MET = {True: "met", False: "**not met**", None: ""}
# The console titles carry a running number (``3. Queue overhead``); on the page the order is the file's.
NUMBER = re.compile(r"^\d+\.\s+")


def load(path: Path = RESULTS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def value_text(key: str, value: Any) -> str:
    """One figure as ``python -m bench`` prints it (:func:`bench.figures.figure_text`), in a table cell."""
    if key == "met":
        return MET.get(value, str(value))
    if isinstance(value, list | dict):
        return cell(json.dumps(value))
    return cell(figure_text(key, value))


def machine_text(machine: dict[str, Any]) -> str:
    load_average = machine.get("load_average_at_start") or [None]
    parts = [
        f"{machine.get('cpu_cores', '?')} CPU cores",
        f"load average {load_average[0]:.2f} at the start" if load_average[0] is not None else "",
        f"Python {machine.get('python', '?')}",
        f"Redis {machine.get('redis_server', '?')}",
        f"LiteLLM {machine.get('litellm', '?')}",
        f"llmqueue {machine.get('llmqueue', '?')}",
        f"run at {machine.get('timestamp', '?')}",
    ]
    return ", ".join(part for part in parts if part)


def title(name: str, result: dict[str, Any]) -> str:
    return cell(NUMBER.sub("", str(result.get("title", name))))


def benchmark_section(name: str, result: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = [f"## {title(name, result)} {{#{name}}}", ""]
    if result.get("description"):
        lines += [f"**What it measures.** {cell(result['description'])}", ""]
    lines += [f"Run it alone: `python -m bench --only {name}`.", ""]
    if "error" in result:
        lines += [f"**The last run failed:** {cell(str(result['error']))}", ""]
    columns: dict[str, str] = result.get("columns", {})
    rows: list[dict[str, Any]] = result.get("rows", [])
    shown = [key for key in columns if any(key in row for row in rows)]
    if shown:
        lines.append(
            table(
                [cell(columns[key]) for key in shown],
                ([value_text(key, row.get(key)) for key in shown] for row in rows),
            )
        )
        lines.append("")
    notes = result.get("notes") or []
    if notes:
        lines += [f"- {cell(str(note))}" for note in notes]
        lines.append("")
    params = result.get("params") or {}
    if params:
        lines.append(
            "Parameters: "
            + ", ".join(f"{code(key)} {code(json.dumps(value))}" for key, value in params.items())
            + "."
        )
        lines.append("")
    lines += [f"Machine: {machine_text(result.get('machine') or machine)}.", ""]
    return "\n".join(lines)


def render(path: Path = RESULTS) -> str:
    """The generated part of the benchmarks page: a summary table, then one section per benchmark."""
    data = load(path)
    machine = data.get("machine", {})
    benchmarks: dict[str, dict[str, Any]] = data.get("benchmarks", {})
    summary = []
    for name, result in benchmarks.items():
        targets = [row for row in result.get("rows", []) if row.get("target")]
        met = sum(1 for row in targets if row.get("met") is True)
        status = f"{met} of {len(targets)} targets met" if targets else "no target"
        summary.append([f"[{title(name, result)}](#{name})", code(name), status])
    parts = [table(["benchmark", "`--only`", "targets"], summary), ""]
    parts += [benchmark_section(name, result, machine) for name, result in benchmarks.items()]
    return "\n".join(parts)
