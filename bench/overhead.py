"""Overhead (issue item 5): the orchestration's own cost, end to end on the dev server.

A canary of the seed's plan with zero-length pauses and no analysis (setWeight 5, pause 0s,
setWeight 25, ... , setWeight 100, pause 0s), one run after another on a quiet stack: what is
left is what tidegate and Temporal add around the Kubernetes calls. From each run's history:

* wall time per step: from one `set_canary_weight` completing to the next one completing (a
  workflow task, the zero pause, scheduling, picking up and running the next patch);
* the gap between two activities (one completes → the next starts): the workflow task and the
  schedule-to-start latency, i.e. pure orchestration;
* each activity's own run time, and the wait for the rollouts (the emulator makes new pods ready
  after `rollout_seconds`; the worker polls the Deployment every second).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.apps import create_stable, wait_ready
from bench.history import fetch_timeline
from bench.stack import Stack
from deploy_models import parse_spec
from starter import start_deployment


@dataclass
class OverheadRun:
    wall_seconds: float  # start_workflow called → result returned
    workflow_seconds: float  # first → last history event
    steps: int
    step_seconds: list[float]
    gaps: list[float]  # activity completed → next activity started
    activity_seconds: dict[str, list[float]]  # started → completed, by activity
    schedule_to_start: list[float]
    workflow_task_seconds: list[float]  # scheduled → completed
    rollout_seconds: float
    events: int
    bytes: int
    outcome: str


@dataclass
class OverheadResult:
    runs: list[OverheadRun] = field(default_factory=list)
    wall_seconds: float = 0.0

    def pooled(self, attribute: str) -> list[float]:
        return [value for run in self.runs for value in getattr(run, attribute)]

    def activity_medians(self) -> dict[str, float]:
        pooled: dict[str, list[float]] = {}
        for run in self.runs:
            for name, values in run.activity_seconds.items():
                pooled.setdefault(name, []).extend(values)
        return {name: statistics.median(values) for name, values in sorted(pooled.items())}


def zero_pause_spec(app: str, image: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for weight in (5, 25, 50, 100):
        steps += [{"setWeight": weight}, {"pause": {"duration": "0s"}}]
    return {"app": app, "image": image, "strategy": {"type": "canary", "canary": {"steps": steps}}}


async def run_overhead(stack: Stack, runs: int = 5, say: Callable[[str], None] = print) -> OverheadResult:
    began = time.monotonic()
    result = OverheadResult()
    tag = f"{int(time.time()) % 100000:05d}"
    apps = [f"o{tag}-{k:02d}" for k in range(runs)]
    async with stack.kube_api() as api:
        for app in apps:
            await create_stable(api, app)
    await wait_ready(stack, [f"{app}-stable" for app in apps])
    say(f"overhead: {runs} zero-pause canaries, one after another")
    for app in apps:
        spec = parse_spec(zero_pause_spec(app, f"{app}:2.0-steady"))
        started = time.monotonic()
        handle = await start_deployment(stack.client, spec, "bench", task_queue=stack.task_queue)
        outcome = await handle.result()
        wall = time.monotonic() - started
        line = await fetch_timeline(handle)
        acts = [a for a in line.activities if a.started is not None and a.closed is not None]
        weights = [a for a in acts if a.name == "set_canary_weight"]
        steps = [b.closed - a.closed for a, b in zip(weights, weights[1:])]  # type: ignore[operator]
        gaps = [b.started - a.closed for a, b in zip(acts, acts[1:]) if b.scheduled >= a.closed]  # type: ignore[operator]
        by_name: dict[str, list[float]] = {}
        for a in acts:
            by_name.setdefault(a.name, []).append(a.closed - a.started)  # type: ignore[operator]
        result.runs.append(OverheadRun(
            wall_seconds=wall,
            workflow_seconds=line.last - line.first,
            steps=len(spec.canary.steps),
            step_seconds=steps[:3],  # the first setWeight 100 → the promotion's weight 0 is no step
            gaps=gaps,
            activity_seconds=by_name,
            schedule_to_start=[a.started - a.scheduled for a in acts],  # type: ignore[operator]
            workflow_task_seconds=[t.completed - t.scheduled for t in line.workflow_tasks if t.completed is not None],
            rollout_seconds=sum(by_name.get("wait_for_rollout", [])),
            events=line.events,
            bytes=line.bytes,
            outcome=outcome.outcome.value,
        ))
    result.wall_seconds = time.monotonic() - began
    return result
