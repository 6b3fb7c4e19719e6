"""docs/benchmarks.md from the figures a `make bench` run measured (nothing here is typed in)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.breach import BreachResult, BreachRun
from bench.carry import CarryResult
from bench.cost import HISTORY_BYTES_WARN, HISTORY_EVENTS_ERROR, HISTORY_EVENTS_WARN, CostResult
from bench.overhead import OverheadResult
from bench.stats import percentile, summary


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    started: datetime
    wall_seconds: float = 0.0
    load: dict[str, dict[str, float]] = field(default_factory=dict)
    overhead: OverheadResult | None = None
    breach: BreachResult | None = None
    cost: CostResult | None = None
    carry: CarryResult | None = None
    plot: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per benchmark


def s(value: float | None, digits: int | None = None) -> str:
    """Seconds, with a precision that suits the value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if digits is None:
        digits = 3 if abs(value) < 0.1 else 2 if abs(value) < 1 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} s"


def ms(value: float | None) -> str:
    """Milliseconds below a second, seconds above."""
    if value is None or math.isnan(value):
        return "–"
    if value >= 0.9995:
        return s(value)
    return f"{value * 1000:.0f} ms" if value >= 0.0095 else f"{value * 1000:.1f} ms"


def mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def n(value: float) -> str:
    return f"{value:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


# -- breach ---------------------------------------------------------------------------------


def timed(runs: list[BreachRun]) -> list[float]:
    return [run.breach_to_rollback for run in runs if run.breach_to_rollback is not None and run.outcome == "rolledBack"]


def breach_section(result: BreachResult, plot: Path | None) -> list[str]:
    config = result.config
    scrape = result.scrape_seconds
    seed_runs = result.group("seed")
    seed_times = timed(seed_runs)
    seed_median = statistics.median(seed_times) if seed_times else math.nan
    out = [
        "## 1. Breach to rollback",
        "",
        f"A canary that turns bad at a known moment. Each run starts from a stable version and a canary image that "
        f"serves without any error; the canary gets 5% of its app's traffic ({result.rate:g} requests/s per app, so "
        f"about {result.rate * 0.05:g} request/s for the canary) and, some seconds into that first window, its image turns "
        f"bad: 20% of its requests answer 500 (the sandbox's `-bad` behaviour). The breach moments are spread evenly over "
        f"{config.offsets[0]:.0%}–{config.offsets[1]:.0%} of the window, the same {config.runs} moments for every "
        "configuration, so they fall at every phase of the analysis schedule. The breach is the canary's first 5xx "
        "(the sandbox's own counters); the rollback is the moment its VirtualService weight was 0 again (the stored "
        f"object, polled every 50 ms, for both). Windows are {config.window:g} s instead of the seed's 600 s, for tidegate "
        f"and the seed alike; Prometheus scrapes every {scrape:g} s.",
        "",
        f"* **tidegate**: the seed's plan (setWeight 5/25/50/100, each followed by `pause: {{duration: {config.window:g}s}}`) "
        "with the default checks (error rate ≤ 1% and p99 ≤ 1 s of the canary's own requests, `rate(...[1m])`), "
        f"`inconclusiveLimit: {config.inconclusive_limit}` (the first seconds at 5% have no canary request yet); "
        f"{config.runs} runs per interval, all at once, one worker (the cost benchmark's runs, one at a time, went on "
        "beside them on the same stack).",
        "* **seed**: the seed's `canary_controller.py` ([bench/seed_canary.py](../bench/seed_canary.py)): set the weight, "
        "sleep the whole window, check once with the seed's queries (error ratio over `[5m]` of the whole app, p99 "
        "without `sum by (le)`), roll back to 0 if unhealthy; same sandbox, same Prometheus, at the same time. Its "
        "queries are scoped to the app (the script assumes one app per Prometheus); not to the version.",
        "",
    ]
    rows = []
    for label in result.labels():
        runs = result.group(label)
        times = timed(runs)
        stats = summary(times)
        rolled = sum(1 for run in runs if run.outcome == "rolledBack")
        early = sum(1 for run in runs if run.turned_at is None)
        ratio = "1×" if label == "seed" else (f"**{seed_median / stats['median']:.0f}×**" if times and seed_times else "–")
        note = f" ({early} rolled back before the breach)" if early else ""
        rows.append([
            label if label == "seed" else f"tidegate, interval {label.split()[1]}",
            f"{rolled}/{len(runs)}{note}",
            s(stats["median"]), s(stats["p90"]), s(stats["max"]), ratio,
        ])
    out += table(["", "rolled back", "median", "p90", "max", "seed's median ÷ this median"], rows)

    out += [
        "### What bounds it",
        "",
        "After the canary's first 5xx, tidegate cannot know before (1) the traffic tick counts it (the sandbox counts "
        f"every 0.1 s), (2) Prometheus scrapes it (every {scrape:g} s), and (3) the next measurement runs (every "
        "interval); "
        "then (4) it queries, judges and patches the weight. So the time is at most scrape + interval + reaction, and "
        "for a breach at a random moment about (scrape + interval) / 2 + reaction on average. The rate window adds "
        "nothing here: the canary's last minute holds about "
        f"{result.rate * 0.05 * 60:.0f} requests, so its first error alone puts the error rate above 1%; a busier "
        "canary needs one error per hundred requests in its window, plus one, before the check trips. Measured, per run, from its history: *waiting* is first 5xx → the "
        "measurement that failed was scheduled; *reaction* is that → weight 0; *expected mean* is "
        "(scrape + interval) / 2 + the median reaction, what breaches spread evenly would average (12 runs "
        "scatter around it), and *bound* is scrape + interval + the slowest reaction, which no run may exceed.",
        "",
    ]
    rows = []
    for label in result.labels()[:-1]:
        runs = [r for r in result.group(label) if r.breach_to_rollback is not None and r.failing_measurement is not None]
        if not runs:
            continue
        interval = runs[0].interval or 0.0
        waits = [r.failing_measurement - r.first_bad for r in runs]  # type: ignore[operator]
        reactions = [r.weight_zero - r.failing_measurement for r in runs]  # type: ignore[operator]
        missed = sum(
            1 for r in runs
            for t in r.measure_times
            if r.first_bad is not None and r.failing_measurement is not None
            and r.first_bad + scrape + 0.5 < t < r.failing_measurement - 1e-6
        )
        mean = statistics.fmean(timed(runs))
        expected = (scrape + interval) / 2 + statistics.median(reactions)
        worst = scrape + interval + max(reactions)
        rows.append([
            f"tidegate, interval {interval:g} s", s(statistics.median(waits)), s(max(waits)),
            ms(statistics.median(reactions)), ms(max(reactions)), s(mean), s(expected), s(max(timed(runs))), s(worst),
            str(missed),
        ])
    out += table(
        ["", "waiting, median", "waiting, max", "reaction, median", "reaction, max", "breach → 0, mean",
         "expected mean", "breach → 0, max", "bound", "measurements that missed it"],
        rows,
    )
    if seed_times:
        at = {}
        for run in seed_runs:
            if run.reason:
                stage = run.reason.split("%")[0].rsplit(" ", 1)[-1]
                at[stage] = at.get(stage, 0) + 1
        where = ", ".join(
            f"at {stage}% in {count} run{'s' if count > 1 else ''}"
            for stage, count in sorted(at.items(), key=lambda kv: float(kv[0]))
        )
        out += [
            f"The seed's script is bounded by its window instead: it looks once, at the end of the window the breach "
            f"falls in, and only if the app-wide error ratio over five minutes is above 1% by then. At 5% of the "
            f"traffic a canary failing 20% of its requests adds about 1% to the app's error ratio, and less while "
            f"the bad minutes are a part of the five: the seed's check caught it {where or '–'}, "
            f"a median {s(seed_median)} after the breach. "
            + (
                f"tidegate's median is {seed_median / statistics.median(timed(result.group(result.labels()[0]))):.0f}× "
                f"shorter at a {result.config.intervals[0]:g} s interval and "
                f"{seed_median / statistics.median(timed(result.group(result.labels()[-2]))):.0f}× shorter at "
                f"{result.config.intervals[-1]:g} s."
                if timed(result.group(result.labels()[0])) and timed(result.group(result.labels()[-2])) else ""
            ),
            "",
        ]

    out += [
        "## 2. Bad requests served",
        "",
        "Same runs: the requests the canary's version answered after its image turned bad, until the rollback "
        "(the sandbox's counters), and the 5xx among them.",
        "",
    ]
    rows = []
    seed_bad = [float(r.bad_requests) for r in seed_runs if r.turned_at is not None]
    for label in result.labels():
        runs = [r for r in result.group(label) if r.turned_at is not None]
        bad = [float(r.bad_requests) for r in runs]
        errors = [float(r.bad_errors) for r in runs]
        ratio = "1×" if label == "seed" else (
            f"**{statistics.median(seed_bad) / max(statistics.median(bad), 1e-9):.0f}×**" if bad and seed_bad else "–"
        )
        rows.append([
            label if label == "seed" else f"tidegate, interval {label.split()[1]}",
            n(statistics.median(bad)) if bad else "–", n(percentile(bad, 0.9)) if bad else "–", n(max(bad)) if bad else "–",
            n(statistics.median(errors)) if errors else "–", n(sum(errors)), ratio,
        ])
    out += table(
        ["", "answered by the bad version, median", "p90", "max", "5xx, median", "5xx, all runs",
         "seed's median ÷ this median"],
        rows,
    )
    if plot is not None:
        out += [
            f"![canary weight and error rate over time, tidegate and the seed]({plot.name})",
            "",
            f"*{plot.name}*: the median run of each configuration, aligned on its breach (dashed); dotted lines are the "
            "rollbacks. Top: the canary's weight. Middle: the canary's 5xx share over the last 5 s, while it has traffic. "
            "Bottom: the 5xx it answered since the breach. All from the sandbox's counters and the stored weights.",
            "",
        ]
    return out


# -- carry ----------------------------------------------------------------------------------


def carry_section(result: CarryResult) -> list[str]:
    config, settings = result.config, result.settings
    out = [
        "## 3. Deployments one worker carries",
        "",
        f"N canaries in flight at once, one per simulated app, each paused at 5% (for 1,000 intervals, long past the benchmark) with the default analysis every "
        f"{config.interval:g} s (two PromQL queries per measurement), all on one `python worker.py` with the SDK's "
        "default worker options. N grows in stages; each stage starts the new deployments (32 starts at a time), waits "
        f"until all are in their pause (*ramp*), then watches {config.window:g} s of steady state. Lateness is, for each "
        "analysis measurement in the window (from the histories of a sample of the runs), the time from its timer's due "
        "moment to the `measure` activity starting: the timer firing, the workflow task, and the activity's "
        "schedule-to-start. (The SDK starts activities eagerly: the worker that completes a workflow task gets the "
        "activities it scheduled in the reply, so their schedule-to-start is close to 0 and the waiting shows in the "
        "workflow tasks'.) CPU is a percentage of one core, averaged over the window (the ramp in brackets); the machine "
        f"has {result_cores()} cores. Here the sandbox ticks more slowly (controller and traffic every "
        f"{settings.controller_tick:g} s) and Prometheus scrapes every {settings.scrape_seconds:g} s, so that a thousand "
        "simulated apps leave the CPU to what is measured.",
        "",
    ]
    rows = []
    for stage in result.stages:
        u, r = stage.usage, stage.ramp_usage
        late = summary(stage.lateness)
        act = summary(stage.activity_schedule_to_start)
        wft = summary(stage.workflow_task_schedule_to_start)

        def cpu(name: str) -> str:
            return f"{u[name].cpu_percent:.0f}% ({r[name].cpu_percent:.0f}%)" if name in u else "–"

        rows.append([
            n(stage.n),
            f"{stage.ramp_seconds:.0f} s ({stage.started / max(stage.ramp_seconds, 1e-9):.1f}/s)",
            cpu("worker"), mib(u["worker"].peak_rss),
            cpu("dev server"), cpu("prometheus"), cpu("bench (sandbox)"),
            f"{ms(late['median'])} / {ms(late['p99'])} / {ms(late['max'])}",
            f"{ms(act['median'])} / {ms(act['p99'])}",
            f"{ms(wft['median'])} / {ms(wft['p99'])}",
            f"{stage.measurements} ({stage.sampled} runs)",
            f"{n(stage.cached)} / {n(stage.cache_misses)} / {n(stage.evictions)}",
            f"{stage.still_in_pause}/{stage.n}",
        ])
    out += table(
        ["N", "ramp (starts/s)", "worker CPU (ramp)", "worker peak RSS", "dev server CPU", "Prometheus CPU",
         "sandbox CPU", "lateness p50 / p99 / max", "activity schedule-to-start p50 / p99",
         "workflow task schedule-to-start p50 / p99", "measurements sampled",
         "worker cache: runs cached / misses / evictions", "still in pause"],
        rows,
    )
    out += [
        "The worker's cache figures are its own metrics (`worker.py --metrics-port`): runs in its workflow cache at the "
        "end of the window; workflow tasks in the window that found their run out of the cache (each replays the "
        "run's whole history first), and runs evicted to make room.",
        "",
    ]
    if result.stages:
        last = result.stages[-1]
        steady = max(last.usage.items(), key=lambda kv: kv[1].cpu_percent)
        ramp = max(last.ramp_usage.items(), key=lambda kv: kv[1].cpu_percent)
        total_ramp = sum(u.cpu_percent for u in last.ramp_usage.values())
        out += [
            f"At N = {n(last.n)}, in steady state the worker used {last.usage['worker'].cpu_percent:.0f}% of a core "
            f"and {mib(last.usage['worker'].peak_rss)} (its peak over the whole run: {mib(last.worker_hwm)}); "
            "the busiest process was the "
            f"{steady[0]} ({steady[1].cpu_percent:.0f}%). While the new deployments were being set up the busiest was "
            f"the {ramp[0]} ({ramp[1].cpu_percent:.0f}%), and the processes of the benchmark together used "
            f"{total_ramp:.0f}% of the {result_cores() * 100}% the machine has."
            + (f" It stopped there: {result.stopped}." if result.stopped else
               " Nothing broke at the sizes measured: every run stayed in its pause and the latest measurement was "
               f"{s(max((max(st.lateness, default=0.0) for st in result.stages), default=0.0))} late, against an "
               f"interval of {config.interval:g} s (`--full` goes on with more)."),
            "",
        ]
        if len(result.stages) >= 2:
            first, last = result.stages[0], result.stages[-1]
            slope = (last.usage["worker"].cpu_percent - first.usage["worker"].cpu_percent) / max(last.n - first.n, 1)
            rss_slope = (last.usage["worker"].peak_rss - first.usage["worker"].peak_rss) / max(last.n - first.n, 1)
            if slope > 0:
                out += [
                    f"Between N = {n(first.n)} and N = {n(last.n)} each further deployment in its pause cost the worker "
                    f"about {slope * 1000:.0f}% of a core per thousand and {rss_slope / 1024:.0f} KiB of memory; at that "
                    f"rate (an extrapolation, not a measurement) the worker's CPU alone would allow about "
                    f"{n(first.n + (100 - first.usage['worker'].cpu_percent) / slope)} deployments per core, measured every "
                    f"{config.interval:g} s, if nothing else gave out first (its workflow cache does, see below).",
                    "",
                ]
        out += [
            "Where the limit is: on this machine all of it shares two cores. Setting deployments up (the ramp) costs the "
            "dev server and the worker most (each start is a dozen activities and workflow tasks, every one a write in "
            "the dev server's SQLite, and the sandbox serves the Kubernetes calls); in steady state a deployment costs one timer, its workflow tasks, "
            "the weight check (one Kubernetes GET) and the `measure` activity (two HTTP queries) per interval, shared by the worker, "
            "the dev server and the API server, and Prometheus answers the queries. A production Temporal cluster takes the server's share off the worker's machine "
            "(history, matching and persistence on their own nodes, a real database) and scales it out; the worker then "
            "has its cores to itself and more workers can share a task queue. What stays is the worker's own cost above, "
            "and its defaults: "
            + ("`worker.py` keeps the SDK's `max_cached_workflows` of 1,000" if keeps_default_cache()
               else "the SDK's default `max_cached_workflows` is 1,000")
            + ", so beyond a thousand "
            "deployments in flight per worker runs are evicted from its cache and a wake-up replays the run's history "
            "(raise it, or add workers); `max_concurrent_activities` (100) bounds the measurements in flight at once.",
            "",
        ]
    return out


def result_cores() -> int:
    import os

    return os.cpu_count() or 1


# -- cost -----------------------------------------------------------------------------------


def cost_section(result: CostResult, interval: float = 30.0) -> list[str]:
    out = [
        "## 4. Cost per deployment",
        "",
        "One update (after a first deployment, not counted) with each strategy's default spec: only the app, the image "
        "and the strategy type; `analysis` names only the Prometheus URL (default checks, every 30 s), the A/B test adds "
        "the two relative checks it requires; blue/green has no analysis. So: the canary's seed plan (5/25/50/100%, "
        "10 minutes each), a 10-minute A/B experiment, rolling's and recreate's 10-minute analysis window, blue/green's "
        "10-minute scale-down delay. These runs use Temporal's time-skipping test server, its clock moved by hand: "
        "timers cost no wall time, activities still run for real against the sandbox and Prometheus, and the history "
        "holds the same events it would on a real server. Kubernetes requests are those the emulator served about "
        "the app's objects during the run; Prometheus queries are those the `measure` activities sent (their inputs, "
        "from the history, times their attempts). The Kubernetes GETs include the rollout polls (the worker reads the "
        "Deployment every second until it is ready; the emulator's pods get ready in 0.5 s). The cost runs went on "
        "beside the breach runs (counted per app).",
        "",
    ]
    rows = []
    for cost in result.costs:
        verbs = ", ".join(f"{count} {verb}" for verb, count in sorted(cost.kube_by_verb.items()))
        rows.append([
            cost.strategy, cost.outcome + (f" ({cost.note[:60]})" if cost.note else ""),
            n(cost.events), kib(cost.bytes), f"{100 * cost.events / HISTORY_EVENTS_WARN:.1f}%",
            str(cost.activities), str(cost.timers), f"{cost.kube_requests} ({verbs})" if verbs else "0",
            str(cost.prometheus_queries), str(cost.measurements), s(cost.wall_seconds),
        ])
    for strategy, why in result.failed.items():
        rows.append([strategy, f"no figures: {why}", *["–"] * 9])
    if result.seed is not None:
        seed = result.seed
        verbs = ", ".join(f"{count} {verb}" for verb, count in sorted(seed["kube_by_verb"].items()))
        rows.append([
            "seed's script (canary, windows of 0 s, for comparison)", seed["outcome"], "–", "–", "–", "–", "–",
            f"{seed['kube_requests']} ({verbs})", str(seed["prometheus_queries"]), str(seed["checks"]), s(seed["wall_seconds"]),
        ])
    out += table(
        ["strategy", "outcome", "history events", "history size", "of the 10,240-event warning", "activities",
         "timers", "Kubernetes API requests", "Prometheus queries", "measurements", "wall time"],
        rows,
    )
    marginal = result.per_measurement
    if marginal:
        events, size = marginal["events"], marginal["bytes"]
        base = marginal["base_events"]
        hours_warn = (HISTORY_EVENTS_WARN - base) / events * interval / 3600
        hours_error = (HISTORY_EVENTS_ERROR - base) / events * interval / 3600
        hours_bytes = (HISTORY_BYTES_WARN - marginal["base_bytes"]) / size * interval / 3600
        out += [
            f"Temporal warns at 10,240 events (or 10 MiB) in one history and terminates the run at 51,200 events (50 MiB). "
            f"Each analysis measurement adds {events:.0f} events and {size / 1024:.1f} KiB (timer, workflow tasks, the "
            f"weight check, the `measure` activity and its result; measured between consecutive measurements of the canary run). A default "
            "deployment stays far below: the canary's whole seed plan is "
            f"{100 * marginal['canary_events'] / HISTORY_EVENTS_WARN:.0f}% "
            f"of the warning. What reaches it is a long wait with analysis: a `pause: {{}}` waiting for approval, "
            f"measured every {interval:g} s, crosses the warning after about **{hours_warn:.1f} hours** and is terminated "
            f"after about **{hours_error:.0f} hours** (the size warning would come after {hours_bytes:.0f} hours)"
            + (
                "; tidegate's workflows do not continue-as-new: a run that measures rolls back before its history "
                "reaches the limit (while its compensation still fits), and `plan` refuses a plan whose timed pauses "
                "would measure more than one run holds, so a pause meant to last days needs a longer interval."
                if not continues_as_new() else
                " if nothing continued it as new."
            ),
            "",
        ]
    return out


def keeps_default_cache() -> bool:
    """Whether worker.py leaves the SDK's workflow cache size (1,000 runs) as it is."""
    from bench.stack import ROOT

    return "max_cached_workflows" not in (ROOT / "worker.py").read_text(encoding="utf-8")


def continues_as_new() -> bool:
    """Whether any of tidegate's workflows continues as new (then histories restart)."""
    from bench.stack import ROOT

    return any("continue_as_new" in path.read_text(encoding="utf-8") for path in (ROOT / "workflows").glob("*.py"))


# -- overhead -------------------------------------------------------------------------------


def overhead_section(result: OverheadResult) -> list[str]:
    runs = result.runs
    if not runs:
        return []
    wall = [r.wall_seconds for r in runs]
    rollout = [r.rollout_seconds for r in runs]
    steps = result.pooled("step_seconds")
    gaps = result.pooled("gaps")
    s2s = result.pooled("schedule_to_start")
    wft = result.pooled("workflow_task_seconds")
    out = [
        "## 5. Overhead",
        "",
        f"A canary of the seed's plan with zero-length pauses and no analysis (setWeight 5, pause 0s, … setWeight 100, "
        f"pause 0s), {len(runs)} runs one after another on the dev server before the other benchmarks start; the "
        "stable version exists. From each run's history:",
        "",
    ]
    def spread(values: list[float]) -> list[str]:
        return [ms(statistics.median(values)), ms(percentile(values, 0.9)), ms(max(values))]

    out += table(["", "median", "p90", "max"], [
        ["end to end (start → result, client side)", s(statistics.median(wall)), s(percentile(wall, 0.9)), s(max(wall))],
        ["… of which waiting for the two rollouts", s(statistics.median(rollout)), s(percentile(rollout, 0.9)), s(max(rollout))],
        ["one step (setWeight N + pause 0s: completion to completion)", *spread(steps)],
        ["between two activities (completed → next started)", *spread(gaps)],
        ["activity schedule-to-start (started eagerly, in the workflow task's reply)", *spread(s2s)],
        ["workflow task (scheduled → completed)", *spread(wft)],
    ])
    medians = result.activity_medians()
    out += [
        "Activities' own run time (median): " + ", ".join(f"`{name}` {ms(value)}" for name, value in medians.items()) + ".",
        "",
        f"So the orchestration itself costs about {ms(statistics.median(gaps))} between two steps (a workflow task and a "
        f"pickup); a weight step, its Kubernetes read-patch-read included, takes {ms(statistics.median(steps))}. "
        f"Nearly all of a zero-pause canary's {s(statistics.median(wall))} is the wait for Kubernetes: the rollouts "
        "(the emulator makes pods ready after 0.5 s; the worker polls the Deployment every second). "
        f"A run writes {statistics.median([r.events for r in runs]):.0f} history events.",
        "",
    ]
    return out


# -- the page -------------------------------------------------------------------------------


def headline(results: Results) -> list[str]:
    """The figures that matter most, each from the section that measured it."""
    lines = []
    breach = results.breach
    if breach is not None:
        seed = timed(breach.group("seed"))
        parts = []
        for label in breach.labels()[:-1]:
            times = timed(breach.group(label))
            if times:
                parts.append(f"{s(statistics.median(times))} at a {label.split()[1]} interval")
        if parts and seed:
            bad = [float(r.bad_requests) for r in breach.group(breach.labels()[0]) if r.turned_at is not None]
            seed_bad = [float(r.bad_requests) for r in breach.group("seed") if r.turned_at is not None]
            lines.append(
                f"* **A bad canary is caught** (first 5xx → weight 0, median) in {', '.join(parts)}, against "
                f"{s(statistics.median(seed))} for the seed's script with the same {breach.config.window:g} s windows; "
                + (
                    f"its bad version answered a median {statistics.median(bad):.0f} requests (at the shortest interval) "
                    f"against {statistics.median(seed_bad):.0f}."
                    if bad and seed_bad else ""
                )
            )
    carry = results.carry
    if carry is not None and carry.stages:
        last = carry.stages[-1]
        late = summary(last.lateness)
        lines.append(
            f"* **One worker carried {n(last.n)} canaries** in their pause, each measured every "
            f"{carry.config.interval:g} s, at {last.usage['worker'].cpu_percent:.0f}% of a core and "
            f"{mib(last.usage['worker'].peak_rss)}; measurements ran {ms(late['median'])} late at the median, "
            f"{ms(late['p99'])} at p99" + (f"; it stopped at {carry.stopped}." if carry.stopped else ".")
        )
    cost = results.cost
    if cost is not None:
        canary = next((c for c in cost.costs if c.strategy == "canary"), None)
        if canary is not None:
            lines.append(
                f"* **A default canary deployment** (the seed's plan, 40 minutes) costs {n(canary.events)} history events "
                f"({kib(canary.bytes)}, {100 * canary.events / HISTORY_EVENTS_WARN:.0f}% of Temporal's warning), "
                f"{canary.kube_requests} Kubernetes API requests and {canary.prometheus_queries} Prometheus queries."
            )
    overhead = results.overhead
    if overhead is not None and overhead.runs:
        lines.append(
            f"* **Orchestration overhead**: {ms(statistics.median(overhead.pooled('gaps')))} between two activities, "
            f"{ms(statistics.median(overhead.pooled('step_seconds')))} per weight step with its Kubernetes calls."
        )
    return ["## Summary", "", *lines, ""] if lines else []



def render(results: Results) -> str:
    out = [
        "# Benchmarks",
        "",
        "How fast a bad canary is caught, how many deployments one worker carries, what a deployment costs and what "
        "the orchestration itself costs, measured on the sandbox stack: the Temporal dev server, the sandbox's emulated "
        "Kubernetes API and simulated traffic, a real Prometheus, and `python worker.py` as a process of its own. "
        "Every figure below was measured by the run described here; the page is written by it.",
        "",
        f"Generated by `{results.command}` on {results.started:%Y-%m-%d %H:%M} UTC in {results.wall_seconds / 60:.1f} minutes"
        + (" (" + ", ".join(f"{name} {took:.0f} s" for name, took in results.phases.items()) + ")." if results.phases else "."),
        "",
        "| machine | |",
        "|---|---|",
    ]
    out += [f"| {key} | {value} |" for key, value in results.machine.items()]
    out.append("")
    if results.load:
        busy = "; ".join(
            f"{name}, the machine was {load['machine_busy_percent']:.0f}% busy, "
            + (
                f"{load['others_percent']:.0f} points of it from processes that are not the benchmark's"
                if load["others_percent"] >= 1 else "all of it the benchmark's own processes"
            )
            for name, load in results.load.items()
        )
        others = any(load["others_percent"] >= 1 for load in results.load.values())
        out += [
            f"CPU of all cores over the run: during {busy}."
            + (" Other processes (on this machine: other people's test runs) took CPU from the figures below." if others else "")
            + " The sandbox (emulated API, simulated traffic, /metrics) runs in the benchmark's own process.",
            "",
        ]
    out += [
        "The benchmark's sandbox is the project's (`sandbox/`), assembled in [bench/stack.py](../bench/stack.py) with "
        "two additions: images a benchmark turns bad at a chosen moment, and a short request log in the emulated API. "
        "kmock, under the emulator, logs every request and scans the whole log to serve each new one, so the API "
        "slows down with every request served (about 20 ms a request after a thousand); the benchmarks inject no "
        "faults, so the log is emptied as requests come in, or setting up a thousand deployments would never end.",
        "",
        "Run it: `make bench` (installs `.[test,bench]`, then `python -m bench.run`); `python -m bench.run --full` "
        "goes on with more deployments in flight until something breaks; `--only breach,cost` runs a part. "
        "Benchmarks are not tests: the suite runs a tiny version of each (`tests/test_bench_smoke.py`) that checks "
        "only that figures come out.",
        "",
    ]
    out += headline(results)
    if results.breach is not None:
        out += breach_section(results.breach, results.plot)
    if results.carry is not None:
        out += carry_section(results.carry)
    if results.cost is not None:
        out += cost_section(results.cost)
    if results.overhead is not None:
        out += overhead_section(results.overhead)
    return "\n".join(out).rstrip() + "\n"


def write(results: Results, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results), encoding="utf-8")
    return path


def as_dict(results: Results) -> dict[str, Any]:
    """The raw figures, for a JSON beside the workdir (samples left out)."""
    import dataclasses

    def clean(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {k: clean(v) for k, v in dataclasses.asdict(value).items() if k != "samples"}
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items() if k != "samples"}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (Path, datetime)):
            return str(value)
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    return clean(results)
