"""Cost per deployment (issue item 4): for each strategy's default spec, what one deployment costs
in Temporal history (events, bytes), Kubernetes API requests and Prometheus queries.

Each strategy runs with its defaults (the spec names only the app, the image and the strategy
type; `analysis` names only the Prometheus URL, A/B adds the relative checks it requires): the
canary's seed plan (5/25/50/100%, 10 minutes each, analysis every 30 s), the A/B test's 10-minute
experiment, rolling's and recreate's 10-minute analysis window, blue/green's 10-minute scale-down
delay. Those windows would take 40 minutes of wall time for the canary alone, so these runs use
Temporal's time-skipping test server (timers fire at once; activities still run for real against
the sandbox cluster and Prometheus). What a run costs does not depend on how fast its timers fire:
the history has the same events. A first deployment of each app runs before (not counted): the
figures are those of an update.

Counted: the run's history (`fetch_history`: events, serialized bytes); the Kubernetes API requests
the emulator served about the app's objects during the run (by HTTP verb; the service proxy's
smoke-test calls apart); the PromQL queries, from the history: each `measure` activity's input
holds its queries, sent once per attempt. The seed's script runs once too (windows of 0 s, a good
canary; its own count of queries), for comparison. Counting per app, this benchmark can run while
others use the same sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.apps import create_seed_routing, create_seed_workloads, wait_ready
from bench.history import Timeline, fetch_timeline
from bench.seed_canary import CanaryController
from bench.stack import Stack
from deploy_models import DEFAULT_ERROR_RATE_QUERY, DEFAULT_P99_QUERY, DeploymentStatus, parse_spec
from starter import start_deployment
from worker import build_worker

BIN = Path(sys.executable).parent
# Temporal's limits on one workflow history (server defaults: limit.historyCount.warn/error,
# limit.historySize.warn/error).
HISTORY_EVENTS_WARN, HISTORY_EVENTS_ERROR = 10_240, 51_200
HISTORY_BYTES_WARN, HISTORY_BYTES_ERROR = 10 * 1024 * 1024, 50 * 1024 * 1024
STRATEGIES = ("blueGreen", "canary", "abTest", "rolling", "recreate")


def default_spec(strategy: str, app: str, image: str, prometheus_url: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"app": app, "image": image, "strategy": {"type": strategy}}
    if strategy == "blueGreen":
        return spec  # blue/green has no analysis
    analysis: dict[str, Any] = {"prometheus": {"url": prometheus_url}}
    if strategy == "abTest":  # an A/B test must compare: its checks need relative bounds
        analysis["checks"] = [
            {"name": "error-rate", "query": DEFAULT_ERROR_RATE_QUERY, "relative": {"maxIncrease": 0.001}},
            {"name": "p99-latency", "query": DEFAULT_P99_QUERY, "max": 1.0, "relative": {"maxRatio": 1.1}},
        ]
    spec["analysis"] = analysis
    return spec


@dataclass
class Cost:
    strategy: str
    outcome: str
    events: int
    bytes: int
    activities: int
    activity_counts: dict[str, int]
    timers: int
    kube_requests: int
    kube_by_verb: dict[str, int]
    proxy_requests: int
    prometheus_queries: int
    measurements: int
    wall_seconds: float
    workflow_seconds: float  # the run's own (skipped) time
    note: str = ""

    @property
    def events_per_measurement(self) -> float | None:
        return None if not self.measurements else self.events / self.measurements


@dataclass
class CostResult:
    costs: list[Cost]
    per_measurement: dict[str, float] = field(default_factory=dict)  # what one more measurement adds
    seed: dict[str, Any] | None = None  # the seed's script, for comparison
    failed: dict[str, str] = field(default_factory=dict)  # strategy → why it has no figures
    wall_seconds: float = 0.0


async def start_time_skipping() -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )


STEP = timedelta(seconds=10)  # virtual time advanced at a time, with no activity running


async def deploy(env: WorkflowEnvironment, task_queue: str, document: dict[str, Any], settle: float) -> Any:
    """Run one deployment, moving the test server's clock by hand, `STEP` at a time, whenever no
    activity is running.

    Timers then cost no wall time, but the analysis still measures a real Prometheus, which needs
    real seconds to see the canary's first requests: whenever the run's phase or weight changed,
    `settle` real seconds pass before the clock moves on (as the window's first interval would in
    real time), so no measurement is inconclusive for want of data that minutes would have given.
    """
    with env.auto_time_skipping_disabled():
        handle = await start_deployment(env.client, parse_spec(document), "bench", task_queue=task_queue, ui_metadata=False)
        result = asyncio.create_task(handle.result())
        seen: tuple[Any, ...] | None = None
        try:
            while not result.done():
                with contextlib.suppress(Exception):
                    status = await handle.query("status", result_type=DeploymentStatus)
                    state = (status.phase, status.weight)
                    if state != seen:
                        seen = state
                        if settle:
                            await asyncio.sleep(settle)
                if result.done():
                    break
                # The test server's clock moves even while an activity runs: only move it between
                # activities, or a rollout wait would miss its heartbeats by virtual minutes.
                description = await handle.describe()
                if description.raw_description.pending_activities:
                    await asyncio.sleep(0.02)
                    continue
                await env.sleep(STEP)
                await asyncio.sleep(0.01)
            return handle, await result
        finally:
            result.cancel()


def split_requests(requests: list[tuple[str, str]]) -> tuple[dict[str, int], int]:
    """Requests by HTTP verb, and (apart) the service proxy's smoke-test calls."""
    by_verb: dict[str, int] = {}
    proxy = 0
    for method, path in requests:
        if "/proxy/" in path:
            proxy += 1
        else:
            by_verb[method.upper()] = by_verb.get(method.upper(), 0) + 1
    return by_verb, proxy


async def measure_strategy(
    env: WorkflowEnvironment, stack: Stack, task_queue: str, strategy: str, timeout: float
) -> tuple[Cost, Timeline]:
    app = f"cost-{strategy.lower()}-{uuid.uuid4().hex[:4]}"
    # Prometheus needs two scrapes of a new version's traffic; without analysis nothing waits for it.
    measured = "analysis" in default_spec(strategy, app, app, stack.prometheus_url)
    settle = 2 * stack.settings.scrape_seconds + 1.5 if measured else 0.0
    await asyncio.wait_for(
        deploy(env, task_queue, default_spec(strategy, app, f"{app}:1.0", stack.prometheus_url), settle), timeout
    )
    await asyncio.sleep(settle)  # v1 has figures in Prometheus
    requests_before = len(stack.cluster.served)
    started = time.monotonic()
    handle, result = await asyncio.wait_for(
        deploy(env, task_queue, default_spec(strategy, app, f"{app}:2.0", stack.prometheus_url), settle), timeout
    )
    wall = time.monotonic() - started
    by_verb, proxy = split_requests(stack.requests_for(app, requests_before))
    line = await fetch_timeline(handle)
    counts = line.activity_counts()
    cost = Cost(
        strategy=strategy,
        outcome=result.outcome.value,
        events=line.events,
        bytes=line.bytes,
        activities=len(line.activities),
        activity_counts=counts,
        timers=len(line.timers),
        kube_requests=sum(by_verb.values()),
        kube_by_verb=by_verb,
        proxy_requests=proxy,
        prometheus_queries=line.prometheus_queries(),
        measurements=counts.get("measure", 0),
        wall_seconds=wall,
        workflow_seconds=(result.finished_at - result.started_at).total_seconds(),
        note=result.reason if result.outcome.value != "promoted" else "",
    )
    return cost, line


async def measure_seed(stack: Stack) -> dict[str, Any]:
    """The seed's script on a good canary, windows of 0 s: its requests and queries, for comparison."""
    app = f"cost-seed-{uuid.uuid4().hex[:4]}"
    async with stack.kube_api() as api:
        await create_seed_workloads(api, app, f"{app}:2.0-steady")
        await wait_ready(stack, [f"{app}-stable", f"{app}-canary"])
        await create_seed_routing(api, app)
    await asyncio.sleep(2 * stack.settings.scrape_seconds + 1.5)  # the app has figures in Prometheus
    controller = CanaryController(str(stack.kubeconfig), stack.prometheus_url, app, window=0.0)
    requests_before = len(stack.cluster.served)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed") as thread:  # not the loop's default executor
        promoted = await asyncio.get_running_loop().run_in_executor(thread, controller.promote_canary)
    wall = time.monotonic() - started
    by_verb, _ = split_requests(stack.requests_for(app, requests_before))
    return {
        "outcome": "promoted" if promoted else "rolledBack",
        "kube_requests": sum(by_verb.values()),
        "kube_by_verb": by_verb,
        "prometheus_queries": controller.queries,
        "checks": sum(1 for _, what in controller.log if "healthy" in what),
        "wall_seconds": wall,
    }


async def run_cost(
    stack: Stack,
    strategies: tuple[str, ...] = STRATEGIES,
    say: Callable[[str], None] = print,
    timeout: float = 150.0,
    seed: bool = True,
) -> CostResult:
    """Each strategy's default spec, one after another; a run that takes longer than `timeout`
    (wall seconds) is reported as such."""
    began = time.monotonic()
    env = await start_time_skipping()
    result = CostResult([])
    try:
        task_queue = f"cost-{uuid.uuid4().hex[:8]}"
        async with stack.kube_api() as api:
            async with build_worker(env.client, api, task_queue):
                for strategy in strategies:
                    say(f"cost: {strategy} (a first deployment, then the measured update)")
                    try:
                        cost, line = await measure_strategy(env, stack, task_queue, strategy, timeout)
                    except TimeoutError:
                        result.failed[strategy] = f"did not finish within {timeout:g} s"
                        continue
                    result.costs.append(cost)
                    marginal = line.per_measurement()
                    if strategy == "canary" and marginal is not None:
                        events, size = marginal
                        result.per_measurement = {
                            "events": events,
                            "bytes": size,
                            "base_events": cost.events - events * cost.measurements,
                            "base_bytes": cost.bytes - size * cost.measurements,
                            "canary_events": cost.events,
                        }
        if seed:
            say("cost: the seed's script, for comparison")
            result.seed = await measure_seed(stack)
    finally:
        with contextlib.suppress(Exception):
            await env.shutdown()
    result.wall_seconds = time.monotonic() - began
    return result
