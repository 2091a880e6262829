"""Pure arithmetic on what the benchmarks record: rates from the provider's counters, percentiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def provider_figures(
    stats: Mapping[str, Any],
    *,
    rpm: float | None,
    tpm: float | None,
    window: float,
) -> dict[str, float]:
    """Goodput and 429 share from the simulated provider's counters (all times on its clock).

    A bucket limit admits at most ``capacity + rate * span`` in any ``span`` after it was full, so

        goodput = (successes - capacity) / (rate * span)

    with ``span`` from the first request to the last success is the fraction of the limit's capacity
    that went into successful calls: 1.0 is perfect, and no client can exceed it. The initial full
    bucket (one ``window`` of the rate) is taken out so that short runs are not flattered by it.
    Requests are the measure for ``rpm``, total tokens for ``tpm``.
    """
    arrivals = stats["arrivals"]
    requests = int(stats["requests"])
    figures: dict[str, float] = {
        "requests": requests,
        "succeeded": len(arrivals),
        "rate_limited": int(stats["rate_limited"]),
        "rate_limited_share": int(stats["rate_limited"]) / requests if requests else 0.0,
    }
    if not arrivals:
        return figures
    start = min(stats["request_times"])
    span = max(arrival["time"] for arrival in arrivals) - start
    tokens = sum(int(arrival["total_tokens"]) for arrival in arrivals)
    figures["span_seconds"] = span
    figures["tokens"] = tokens
    if span <= 0:
        return figures
    figures["requests_per_minute"] = len(arrivals) / span * 60
    figures["tokens_per_minute"] = tokens / span * 60
    if rpm is not None:
        figures["rpm_goodput"] = (len(arrivals) - rpm * window / 60) / (rpm / 60 * span)
    if tpm is not None:
        figures["tpm_goodput"] = (tokens - tpm * window / 60) / (tpm / 60 * span)
    return figures
