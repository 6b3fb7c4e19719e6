"""`make demo` is what a newcomer runs first: it must end as it says, every time."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from sandbox.demo import KUBE_PORT, METRICS_PORT, PROMETHEUS_PORT, TEMPORAL_PORT, UI_PORT

ROOT = Path(__file__).resolve().parent.parent


def in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_demo_promotes_the_good_rolls_back_the_bad_and_switches_blue_green() -> None:
    busy = [port for port in (TEMPORAL_PORT, UI_PORT, KUBE_PORT, METRICS_PORT, PROMETHEUS_PORT) if in_use(port)]
    assert not busy, f"the demo's fixed ports are in use: {busy}"
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.demo"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.split("deployment outcome", 1)[-1].split("demo finished", 1)[0]
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:] if line.strip()}
    assert rows == {"shop": "promoted", "cart": "rolledBack", "pay": "promoted"}, done.stdout[-3000:]
    assert "error-rate = " in done.stdout and "demo finished in" in done.stdout
    live = [line for line in done.stdout.splitlines() if line.startswith("shop ") and " measured " in line]
    assert len(live) >= 10 and "error-rate " in live[0] and ": pass" in live[-1]  # the analysis, as it runs
    busy = [port for port in (TEMPORAL_PORT, UI_PORT, KUBE_PORT, METRICS_PORT, PROMETHEUS_PORT) if in_use(port)]
    assert not busy, f"the demo left something listening on {busy}"
