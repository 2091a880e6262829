"""The metrics table: every series a worker's ``/metrics`` serves, with its type, labels and help text.

Read from a :class:`llmqueue.ops.metrics.WorkerMetrics` built on an empty registry, so a metric added,
renamed or given another label in the code changes the page.
"""

from __future__ import annotations

from dataclasses import dataclass

from docgen.markdown import cell, code, table

# What a scrape shows after the family's name: a counter's samples end in ``_total``.
SAMPLE_SUFFIX = {"counter": "_total"}


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def metrics() -> list[Metric]:
    """Every metric a worker registers, in the order it registers them."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from llmqueue.ops.metrics import WorkerMetrics

    worker = WorkerMetrics(CollectorRegistry())
    out = []
    for value in vars(worker).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        (family,) = value.describe()
        labels = tuple(value._labelnames)  # prometheus_client keeps a metric's label names only here
        name = family.name + SAMPLE_SUFFIX.get(family.type, "")
        out.append(Metric(name, family.type, labels, family.documentation))
    return out


def render() -> str:
    """The generated part of the operations guide's metrics section."""
    return table(
        ["metric", "type", "labels", "meaning"],
        (
            [
                code(metric.name),
                metric.type,
                ", ".join(code(label) for label in metric.labels),
                cell(metric.help),
            ]
            for metric in metrics()
        ),
    )
