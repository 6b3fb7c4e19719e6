"""Small statistics for the reports."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), interpolating linearly between the closest ranks; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    """n, median, p90, p99, max and mean."""
    if not values:
        nan = float("nan")
        return {"n": 0, "median": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }
