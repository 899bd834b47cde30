"""The one statistics helper of the benchmarks: percentiles the same way everywhere."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default and
    `statistics.quantiles(method="inclusive")`); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Iterable[float], digits: int = 1) -> dict:
    """n, p50, p95, max and mean of some timings, rounded."""
    values = list(values)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def percentiles(values: Iterable[float], qs: Iterable[int] = (50, 95), digits: int = 2) -> dict:
    """{"p50": ..., "p95": ...} (one key per q), rounded; None for no values."""
    values = list(values)
    out = {}
    for q in qs:
        p = percentile(values, q)
        out[f"p{q}"] = None if p is None else round(p, digits)
    return out
