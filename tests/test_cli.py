"""The CLI contract CI depends on: output and exit codes, checked without Temporal or a cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import starter

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "starter.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize("example", sorted(str(p.relative_to(ROOT / "examples")) for p in (ROOT / "examples").rglob("*.yaml")))
def test_plan_accepts_every_example(example: str) -> None:
    done = run("plan", f"examples/{example}")
    assert done.returncode == 0, done.stderr
    assert "switch Service" in done.stdout or "setWeight" in done.stdout or "  1." in done.stdout


def test_plan_shows_the_steps_and_timers() -> None:
    done = run("plan", "examples/blue-green.yaml")
    assert done.returncode == 0
    assert "progress deadline 10m" in done.stdout
    assert "keep the old colour for 10m" in done.stdout
    assert "smoke test GET" in done.stdout


def test_bad_spec_exits_2_naming_the_field_without_contacting_temporal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("app: myapp\nimage: myapp:2\nstrategy:\n  type: blueGreen\n  blueGreen:\n    scaleDownDelay: 10x\n")
    # An address nothing listens on: a start that got past validation would fail with 1, not 2.
    env = {"PATH": "/usr/bin:/bin", "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    done = run("start", str(bad), "--wait", env=env)
    assert done.returncode == 2
    assert "strategy.blueGreen.scaleDownDelay: '10x' is not a duration" in done.stderr


def test_unreadable_and_non_yaml_specs_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("app: [unclosed\n")
    assert starter.main(["plan", str(broken)]) == 2
    assert starter.main(["plan", str(tmp_path / "missing.yaml")]) == 2


def test_image_override_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert starter.main(["plan", "examples/blue-green.yaml", "--image", "bad image"]) == 2
    assert "image: 'bad image' is not an image reference" in capsys.readouterr().err
    assert starter.main(["plan", "examples/blue-green.yaml", "--image", "myapp:2.1"]) == 0
    assert "myapp:2.1" in capsys.readouterr().out


def test_usage_errors_exit_2() -> None:
    assert starter.main(["launch", "x"]) == 2
    assert starter.main(["approve"]) == 2


def test_status_text_shows_the_weight_the_downtime_and_the_last_analysis() -> None:
    import io
    from datetime import datetime, timezone

    from deploy_models import CheckOutcome, DeploymentStatus, Downtime, Measurement, Phase, Verdict

    at = datetime(2026, 11, 26, 12, 0, 5, tzinfo=timezone.utc)
    status = DeploymentStatus(
        app="shop", namespace="default", strategy="canary", image="shop:2.0", phase=Phase.OBSERVING,
        started_at=at, updated_at=at, weight=25, step=3,
        downtime=Downtime(started_at=at, ended_at=at.replace(second=8), seconds=3.0),
        last_measurement=Measurement(at=at, verdict=Verdict.INCONCLUSIVE, checks=[
            CheckOutcome(name="error-rate", verdict=Verdict.PASS, value=0.004, bound="≤ 0.01", query="q", message="m"),
            CheckOutcome(name="p99", verdict=Verdict.INCONCLUSIVE, bound="≤ 1", query="q", message="m"),
            CheckOutcome(name="conversion", verdict=Verdict.PASS, value=0.031, baseline=0.03, bound="≥ A", query="q", message="m"),
        ]),
    )
    out = io.StringIO()
    starter.print_status(status, out)
    text = out.getvalue()
    assert "weight:  25% to the new version (step 3)" in text
    assert "downtime: 3.0s (no pod served from 12:00:05 to 12:00:08)" in text
    assert "analysis: inconclusive at 12:00:05: error-rate 0.004 (pass); p99 no data (inconclusive); " in text
    assert "conversion 0.031 vs 0.03 on the stable version (A) (pass)" in text  # both variants of an A/B test


def test_the_live_line_shows_step_weight_figures_and_the_timer() -> None:
    from datetime import datetime, timedelta, timezone

    from deploy_models import CheckOutcome, DeploymentStatus, Measurement, Phase, Verdict

    now = datetime(2026, 11, 26, 12, 10, tzinfo=timezone.utc)
    status = DeploymentStatus(
        app="shop", namespace="default", strategy="canary", image="shop:2.0", phase=Phase.OBSERVING,
        started_at=now - timedelta(minutes=10), updated_at=now, weight=25, step=3, timer_ends_at=now + timedelta(seconds=95),
        last_measurement=Measurement(at=now, verdict=Verdict.PASS, checks=[
            CheckOutcome(name="error-rate", verdict=Verdict.PASS, value=0.00412, bound="≤ 0.01", query="q", message="m"),
            CheckOutcome(name="p99", verdict=Verdict.INCONCLUSIVE, bound="≤ 1", query="q", message="m"),
        ]),
    )
    assert starter.status_line(status, now) == (
        "Observing | step 3 | weight 25% | error-rate=0.00412 p99=no data | timer 95s left | elapsed 600s"
    )
