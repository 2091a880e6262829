"""``pytest --cpu N``: the N tests that used the most CPU, and the CPU of each test file, at the end.

``--durations`` shows where the suite's time goes; this shows its CPU, most of which is spent in
processes the tests start (workers and ``llmqueue run``, each importing LiteLLM). Each test's CPU is
this process's own during the test, plus its children's: ``getrusage(RUSAGE_CHILDREN)`` counts a child
once it has ended and been waited for, with the children it waited for in turn, so a process a test
leaves running is counted in the test that sees it end. Works under pytest-xdist (the figures travel
in each test's report).
"""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Generator
from typing import Any

import pytest

_PROPERTY = "cpu_seconds"
_started = pytest.StashKey[tuple[float, float]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu",
        type=int,
        default=None,
        metavar="N",
        help="show the N tests that used the most CPU (their own and their child processes'), "
        "and the CPU of each test file",
    )


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its ended and waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.config.getoption("cpu") is not None:
        item.stash[_started] = _cpu_seconds()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown" and _started in item.stash:
        own_before, children_before = item.stash[_started]
        own, children = _cpu_seconds()
        report.user_properties.append((_PROPERTY, (own - own_before, children - children_before)))
    return report


#: Each test's CPU seconds (own, child processes'), from its teardown report (here or an xdist worker's).
_tests: dict[str, tuple[float, float]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        value: Any
        for name, value in report.user_properties:
            if name == _PROPERTY:
                own, children = value  # a list once it came from an xdist worker
                _tests[report.nodeid] = (float(own), float(children))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.getoption("cpu")
    if count is None or not _tests:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"CPU of the {count} tests that used the most (s: own + child processes)")
    ranked = sorted(_tests.items(), key=lambda item: -sum(item[1]))
    for nodeid, (own, children) in ranked[:count]:
        write(f"{own + children:8.2f} = {own:6.2f} + {children:6.2f}  {nodeid}")
    files: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for nodeid, (own, children) in _tests.items():
        totals = files[nodeid.split("::")[0]]
        totals[0] += own
        totals[1] += children
    terminalreporter.section("CPU of each test file (s: own + child processes)")
    for path, (own, children) in sorted(files.items(), key=lambda item: -sum(item[1])):
        write(f"{own + children:8.2f} = {own:6.2f} + {children:6.2f}  {path}")
    all_own = sum(own for own, _ in files.values())
    all_children = sum(children for _, children in files.values())
    write(f"{all_own + all_children:8.2f} = {all_own:6.2f} + {all_children:6.2f}  in all")
