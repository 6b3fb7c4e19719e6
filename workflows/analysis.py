"""Judging a new version from PromQL measurements: pure, deterministic, shared by strategies.

A measurement runs every check once. A check passes, fails (a value breaks a bound), is
inconclusive (no data or NaN: never a pass, as Flagger and Kayenta hold) or is an error
(Prometheus could not answer). `AnalysisLimits` counts them the way Argo Rollouts does:
more than `failureLimit` failed measurements, or more than `inconclusiveLimit` inconclusive /
`consecutiveErrorLimit` erroneous measurements in a row, and the analysis has failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from deploy_models import (
        Analysis,
        Check,
        CheckOutcome,
        Measurement,
        MetricQuery,
        MetricValue,
        RelativeBound,
        Verdict,
        render_query,
    )


@dataclass(frozen=True)
class Variants:
    """The labels a query is rendered with: the app, and which version is new and which stable."""

    app: str
    namespace: str
    canary: str
    stable: str

    def render(self, check: Check, version: str) -> str:
        return render_query(
            check.query,
            app=self.app,
            namespace=self.namespace,
            version=version,
            canary=self.canary,
            stable=self.stable,
        )


def queries(checks: list[Check], variants: Variants) -> list[MetricQuery]:
    """Every query a measurement needs: the canary's value, and the stable one for relative checks."""
    wanted = []
    for check in checks:
        wanted.append(MetricQuery(name=f"{check.name}@{variants.canary}", query=variants.render(check, variants.canary)))
        if check.relative is not None:
            wanted.append(
                MetricQuery(name=f"{check.name}@{variants.stable}", query=variants.render(check, variants.stable))
            )
    return wanted


def format_value(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def describe_figures(checks: list[CheckOutcome]) -> str:
    """`error-rate 0.004, p99-latency no data`: each check's value, for a record or a console."""
    return ", ".join(f"{check.name} {format_value(check.value)}" for check in checks)


def relative_bounds(relative: RelativeBound) -> list[tuple[bool, str, Callable[[float], float], str]]:
    """Each relative bound set: (upper bound?, how it reads after the stable version's name,
    the limit given stable's value, how a breach reads before "stable's value").

    A negative `maxIncrease` asks the canary to be better (lower) by that much; a negative
    `minIncrease` tolerates a drop of that much.
    """
    found: list[tuple[bool, str, Callable[[float], float], str]] = []
    for upper, increase, ratio in (
        (True, relative.max_increase, relative.max_ratio),
        (False, relative.min_increase, relative.min_ratio),
    ):
        if increase is not None:
            sign, size, side = ("+", increase, "above") if increase >= 0 else ("−", -increase, "below")
            # an upper bound is broken by being too high, a lower one by being too low
            breach = f"{'more than' if upper == (increase >= 0) else 'not at least'} {size:g} {side}"
            found.append((upper, f"{sign} {size:g}", lambda base, amount=increase: base + amount, breach))
        if ratio is not None:
            breach = f"more than {ratio:g}×" if upper else f"less than {ratio:g}×"
            found.append((upper, f"× {ratio:g}", lambda base, factor=ratio: base * factor, breach))
    return found


def describe_bounds(check: Check, stable: str) -> str:
    """`≤ 0.01 and ≤ v1 + 0.005`: a check's bounds, naming the stable version `stable`."""
    bounds = []
    if check.min is not None:
        bounds.append(f"≥ {check.min:g}")
    if check.max is not None:
        bounds.append(f"≤ {check.max:g}")
    relative = relative_bounds(check.relative) if check.relative is not None else []
    bounds += [f"{'≤' if upper else '≥'} {stable} {written}" for upper, written, _, _ in relative]
    return " and ".join(bounds)


def judge_check(check: Check, variants: Variants, values: dict[str, MetricValue]) -> CheckOutcome:
    mine = values[f"{check.name}@{variants.canary}"]
    theirs = values.get(f"{check.name}@{variants.stable}")
    relative = relative_bounds(check.relative) if check.relative is not None else []
    outcome = dict(name=check.name, value=mine.value, bound=describe_bounds(check, variants.stable), query=mine.query)
    if theirs is not None:
        outcome["baseline"] = theirs.value

    errors = [v.error for v in (mine, theirs) if v is not None and v.error]
    if errors:
        return CheckOutcome(**outcome, verdict=Verdict.ERROR, message="; ".join(errors))
    value = mine.value
    if value is None or math.isnan(value):
        return CheckOutcome(
            **outcome, verdict=Verdict.INCONCLUSIVE, message=f"{check.name}: no data for {variants.canary}"
        )
    broken = []
    if check.min is not None and value < check.min:
        broken.append(f"below {check.min:g}")
    if check.max is not None and value > check.max:
        broken.append(f"above {check.max:g}")
    if relative:
        assert theirs is not None
        baseline = theirs.value
        if baseline is None or math.isnan(baseline):
            return CheckOutcome(
                **outcome,
                verdict=Verdict.INCONCLUSIVE,
                message=f"{check.name}: no data for {variants.stable} to compare with",
            )
        for upper, _, limit, breach in relative:
            if value > limit(baseline) if upper else value < limit(baseline):
                broken.append(f"{breach} {variants.stable}'s {format_value(baseline)}")
    if broken:
        return CheckOutcome(
            **outcome,
            verdict=Verdict.FAIL,
            message=f"{check.name} = {format_value(value)}, " + " and ".join(broken),
        )
    return CheckOutcome(**outcome, verdict=Verdict.PASS, message=f"{check.name} = {format_value(value)}")


def judge(at: datetime, checks: list[Check], variants: Variants, values: list[MetricValue]) -> Measurement:
    """A measurement's verdict: any failure fails it; else any error; else any missing data."""
    by_name = {value.name: value for value in values}
    outcomes = [judge_check(check, variants, by_name) for check in checks]
    verdicts = {outcome.verdict for outcome in outcomes}
    for verdict in (Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE):
        if verdict in verdicts:
            return Measurement(at=at, verdict=verdict, checks=outcomes)
    return Measurement(at=at, verdict=Verdict.PASS, checks=outcomes)


@dataclass
class AnalysisLimits:
    """Counts measurements against the spec's limits; `add` says when the analysis has failed."""

    analysis: Analysis
    # Also count no data and errors together: alternating, each would reset the other's count,
    # and a run could go on without one usable measurement. (False only for runs started before.)
    unusable_together: bool = True
    failures: int = 0
    inconclusive_in_a_row: int = 0
    errors_in_a_row: int = 0
    unusable_in_a_row: int = 0

    def add(self, measurement: Measurement) -> str | None:
        """Count a measurement; return why the analysis failed, or None while it holds."""
        verdict = measurement.verdict
        self.inconclusive_in_a_row = self.inconclusive_in_a_row + 1 if verdict == Verdict.INCONCLUSIVE else 0
        self.errors_in_a_row = self.errors_in_a_row + 1 if verdict == Verdict.ERROR else 0
        unusable = verdict in (Verdict.INCONCLUSIVE, Verdict.ERROR)
        self.unusable_in_a_row = self.unusable_in_a_row + 1 if unusable else 0
        if verdict == Verdict.FAIL:
            self.failures += 1
        first = next((c for c in measurement.checks if c.verdict == verdict), None)
        detail = (
            f"{first.message} (bound {first.bound}; query {first.query})" if first is not None else verdict.value
        )
        if self.failures > self.analysis.failure_limit:
            return f"analysis failed: {detail}; {self.failures} failed measurement(s), limit {self.analysis.failure_limit}"
        if self.inconclusive_in_a_row > self.analysis.inconclusive_limit:
            return (
                f"analysis inconclusive {self.inconclusive_in_a_row} times in a row "
                f"(limit {self.analysis.inconclusive_limit}): {detail}"
            )
        if self.errors_in_a_row > self.analysis.consecutive_error_limit:
            return (
                f"analysis could not measure {self.errors_in_a_row} times in a row "
                f"(limit {self.analysis.consecutive_error_limit}): {detail}"
            )
        limit = max(self.analysis.inconclusive_limit, self.analysis.consecutive_error_limit)
        if self.unusable_together and self.unusable_in_a_row > limit:
            return (
                f"analysis had no usable measurement (no data or an error) {self.unusable_in_a_row} times in a row "
                f"(limit {limit}): {detail}"
            )
        return None
