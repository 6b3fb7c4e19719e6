"""The picture of the bad-canary scenario: canary weight and the canary's error rate over time,
breach and rollbacks marked, tidegate (each interval) and the seed's script on one chart."""

from __future__ import annotations

import math
from pathlib import Path

from bench.breach import BreachResult, BreachRun

ERROR_WINDOW = 5.0  # seconds: the error rate plotted is the canary's 5xx share over the last 5 s
COLOURS = {"seed": "#d62728"}
TIDEGATE_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#17becf"]


def representative(runs: list[BreachRun]) -> BreachRun | None:
    """The run whose breach-to-rollback time is the median of its group (the lower one of two)."""
    timed = sorted((r for r in runs if r.breach_to_rollback is not None and r.samples), key=lambda r: r.breach_to_rollback or 0.0)
    return timed[(len(timed) - 1) // 2] if timed else None


def error_rate_series(run: BreachRun) -> tuple[list[float], list[float]]:
    """(time since the breach, 5xx share over the trailing ERROR_WINDOW) from the run's samples,
    while the canary has traffic (a version that serves nothing has no error rate)."""
    assert run.first_bad is not None
    times, rates = [], []
    j = 0
    samples = run.samples
    for t, weight, requests, errors in samples:
        while j < len(samples) and samples[j][0] < t - ERROR_WINDOW:
            j += 1
        _, _, requests0, errors0 = samples[j]
        served = requests - requests0
        times.append(t - run.first_bad)
        rates.append(100 * (errors - errors0) / served if served > 0 and weight > 0 else math.nan)
    return times, rates


def errors_since_breach(run: BreachRun) -> tuple[list[float], list[float]]:
    """(time since the breach, 5xx the canary answered since the breach, itself included)."""
    assert run.first_bad is not None
    before = max((e for t, _, _, e in run.samples if t < run.first_bad), default=0)
    return [t - run.first_bad for t, *_ in run.samples], [max(0, e - before) for *_, e in run.samples]


def plot_breach(result: BreachResult, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen: list[tuple[str, str, BreachRun]] = []
    for index, label in enumerate(result.labels()):
        run = representative(result.group(label))
        if run is not None:
            colour = COLOURS.get(label, TIDEGATE_COLOURS[index % len(TIDEGATE_COLOURS)])
            chosen.append((label, colour, run))
    if not chosen:
        return None
    end = max((run.breach_to_rollback or 0.0) for _, _, run in chosen) + 8
    start = -min(15.0, max(5.0, min((run.first_bad or 0) - (run.weighted_at or 0) for _, _, run in chosen)))

    figure, (top, bottom, total) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 8.5), gridspec_kw={"height_ratios": [1, 1, 0.8]}
    )
    for label, colour, run in chosen:
        assert run.first_bad is not None
        times = [t - run.first_bad for t, *_ in run.samples]
        weights = [w for _, w, _, _ in run.samples]
        took = run.breach_to_rollback or 0.0
        name = f"{label}: weight 0 after {took:.1f}s" if label == "seed" else f"{label} interval: weight 0 after {took:.1f}s"
        top.step(times, weights, where="post", color=colour, label=name, linewidth=2 if label == "seed" else 1.6)
        er_times, rates = error_rate_series(run)
        bottom.plot(er_times, rates, color=colour, linewidth=1.4, label=label)
        err_times, errors = errors_since_breach(run)
        total.step(err_times, errors, where="post", color=colour, linewidth=1.6)
        for axis in (top, bottom, total):
            axis.axvline(took, color=colour, linestyle=":", linewidth=1.2)
    for axis in (top, bottom, total):
        axis.axvline(0, color="black", linestyle="--", linewidth=1.2)
        axis.grid(True, alpha=0.3)
    top.annotate("breach: the canary's first 5xx", xy=(0, 0), xytext=(0.01 * (end - start), 0.92), fontsize=8,
                 textcoords=("data", "axes fraction"))
    top.set_ylabel("canary weight (%)")
    highest = max((w for _, _, run in chosen for _, w, _, _ in run.samples), default=100)
    top.set_ylim(-2, min(110, highest * 1.9 + 2))  # room above the lines for the legend
    top.legend(loc="upper right", fontsize=8, title="rollback (dotted)", title_fontsize=8)
    bottom.set_ylabel(f"canary 5xx share, last {ERROR_WINDOW:g}s (%)")
    bottom.axhline(1.0, color="grey", linewidth=0.8)
    bottom.annotate("1% limit", xy=(end - 1, 1.5), ha="right", fontsize=8, color="grey")
    total.set_ylabel("5xx it answered\nsince the breach")
    total.set_xlabel("seconds since the breach (median run of each)")
    total.set_xlim(start, end)
    figure.suptitle(
        f"A canary that turns bad at 5%: tidegate vs the seed's script (window {result.config.window:g}s, "
        f"scrape {result.scrape_seconds:g}s, {result.rate:g} req/s per app)",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
