"""A tiny version of every benchmark (bench/), to keep the scripts working.

Benchmarks report figures; this asserts only that figures come out, never how good they are.
"""

from __future__ import annotations

import asyncio
import importlib.util
from datetime import datetime, timezone
from pathlib import Path

from bench.breach import BreachConfig, run_breach
from bench.carry import CarryConfig, run_carry
from bench.cost import run_cost
from bench.overhead import run_overhead
from bench.plot import plot_breach
from bench.procs import machine
from bench.report import Results, write
from bench.stack import StackSettings, bench_stack


def quiet(message: str) -> None:
    """Progress lines are for `make bench`."""


async def test_every_benchmark_produces_figures(tmp_path: Path) -> None:
    # 100 requests/s per app: the canary gets 5 a second at 5%, so its first 5xx comes quickly.
    async with bench_stack(tmp_path / "stack", StackSettings(rate=100.0, rollout_seconds=0.3)) as stack:
        overhead = await run_overhead(stack, runs=1, say=quiet)
        breach, cost, carry = await asyncio.gather(
            run_breach(stack, BreachConfig(intervals=(1.0,), runs=1, window=3.0), say=quiet),
            run_cost(stack, strategies=("blueGreen",), say=quiet, seed=False),
            run_carry(stack, CarryConfig(sizes=(3,), interval=1.0, window=3.0, sample=3, ramp_timeout=60), say=quiet),
        )

    assert overhead.runs[0].outcome == "promoted" and overhead.runs[0].step_seconds
    assert {run.label for run in breach.runs} == {"tidegate 1s", "seed"}
    for run in breach.runs:
        assert run.outcome == "rolledBack", (run.label, run.reason)
        assert run.breach_to_rollback is not None and run.bad_requests > 0
    assert cost.costs[0].strategy == "blueGreen" and cost.costs[0].events > 0 and cost.costs[0].kube_requests > 0
    stage = carry.stages[0]
    assert stage.n == 3 and stage.in_pause == 3 and stage.usage["worker"].peak_rss > 0

    results = Results(machine=machine(), command="pytest", started=datetime.now(timezone.utc), wall_seconds=1.0)
    results.overhead, results.breach, results.cost, results.carry = overhead, breach, cost, carry
    if importlib.util.find_spec("matplotlib") is not None:  # the `bench` extra; `make test` installs `test` only
        results.plot = plot_breach(breach, tmp_path / "docs" / "benchmark-canary.png")
        assert results.plot is not None and results.plot.stat().st_size > 0
    page = write(results, tmp_path / "docs" / "benchmarks.md").read_text()
    for section in ("Breach to rollback", "Bad requests served", "Deployments one worker carries",
                    "Cost per deployment", "Overhead"):
        assert section in page
