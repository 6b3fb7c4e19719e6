"""Relative bounds, B (canary) against A (stable): worse, not worse, better by a margin."""

from __future__ import annotations

from typing import Any

import pytest

from deploy_models import Check, MetricValue, Verdict
from workflows.analysis import Variants, judge_check

VARIANTS = Variants(app="myapp", namespace="default", canary="v2", stable="v1")


def verdict(relative: dict[str, Any], b: float, a: float) -> tuple[Verdict, str, str]:
    check = Check.model_validate({"name": "m", "query": 'm{version="{{version}}"}', "relative": relative})
    values = {f"m@{v}": MetricValue(name=f"m@{v}", query="q", value=x) for v, x in (("v2", b), ("v1", a))}
    outcome = judge_check(check, VARIANTS, values)
    assert outcome.value == b and outcome.baseline == a  # both variants' figures are kept
    return outcome.verdict, outcome.bound, outcome.message


@pytest.mark.parametrize(
    ("relative", "b", "a", "expected", "bound", "message"),
    [
        # lower is better (errors, latency)
        ({"maxIncrease": 0.005}, 0.012, 0.01, Verdict.PASS, "≤ v1 + 0.005", "m = 0.012"),
        ({"maxIncrease": 0.005}, 0.02, 0.01, Verdict.FAIL, "≤ v1 + 0.005", "more than 0.005 above v1's 0.01"),
        # a negative maxIncrease: B must be better (lower) by at least that much
        ({"maxIncrease": -0.002}, 0.007, 0.01, Verdict.PASS, "≤ v1 − 0.002", "m = 0.007"),
        ({"maxIncrease": -0.002}, 0.009, 0.01, Verdict.FAIL, "≤ v1 − 0.002", "not at least 0.002 below v1's 0.01"),
        ({"maxRatio": 0.9}, 0.95, 1.0, Verdict.FAIL, "≤ v1 × 0.9", "more than 0.9× v1's 1"),
        # higher is better (conversions): B at least as good, or better by a margin
        ({"minIncrease": 0}, 0.031, 0.03, Verdict.PASS, "≥ v1 + 0", "m = 0.031"),
        ({"minIncrease": 0.005}, 0.031, 0.03, Verdict.FAIL, "≥ v1 + 0.005", "not at least 0.005 above v1's 0.03"),
        ({"minIncrease": -0.002}, 0.029, 0.03, Verdict.PASS, "≥ v1 − 0.002", "m = 0.029"),
        ({"minIncrease": -0.002}, 0.027, 0.03, Verdict.FAIL, "≥ v1 − 0.002", "more than 0.002 below v1's 0.03"),
        ({"minRatio": 1.05}, 0.0312, 0.03, Verdict.FAIL, "≥ v1 × 1.05", "less than 1.05× v1's 0.03"),
        ({"minRatio": 1.05}, 0.0316, 0.03, Verdict.PASS, "≥ v1 × 1.05", "m = 0.0316"),
    ],
)
def test_relative_bounds(
    relative: dict[str, Any], b: float, a: float, expected: Verdict, bound: str, message: str
) -> None:
    found, found_bound, found_message = verdict(relative, b, a)
    assert (found, found_bound) == (expected, bound)
    assert message in found_message


def test_a_window_and_a_margin_combine() -> None:
    found, bound, _ = verdict({"minIncrease": -0.01, "maxIncrease": 0.01}, 0.5, 0.5)
    assert found == Verdict.PASS and bound == "≤ v1 + 0.01 and ≥ v1 − 0.01"
