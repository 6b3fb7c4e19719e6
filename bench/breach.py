"""Breach to rollback (issue items 1 and 2): a canary that turns bad at a known moment.

Every run starts from a stable version (v1) and a canary image that serves without errors; the
canary gets 5% of the traffic, and `offset` seconds into that first window its image turns bad
(the sandbox's `-bad` behaviour: 20% of its requests answer 500). Offsets are spread evenly over
the window, the same set for every configuration, so the breach falls at every phase of the
analysis schedule.

* tidegate: the seed's plan (setWeight 5/25/50/100, each followed by `pause: {duration: window}`)
  with the default checks (error rate ≤ 1% and p99 ≤ 1 s of the canary's own requests over 1m),
  for each analysis interval; many runs at once, one app each.
* the seed's `canary_controller.py` (bench/seed_canary.py) with the same window, on the same
  sandbox, at the same time.

Measured from the sandbox itself, the same way for both: the breach is the canary's first 5xx
(the sandbox's counters; the canary has none before it turns bad), the rollback is the moment the
VirtualService's stored canary weight became 0 (polled every `POLL` seconds); the bad requests are
those the canary version answered after it turned bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.apps import (
    NAMESPACE,
    create_seed_routing,
    create_seed_workloads,
    create_stable,
    gather_limited,
    wait_ready,
)
from bench.history import Timeline, fetch_timeline
from bench.seed_canary import CanaryController
from bench.stack import Stack
from deploy_models import DeploymentResult, parse_spec
from starter import start_deployment

POLL = 0.05  # seconds between two looks at the weights and counters
Sample = tuple[float, int, int, int]  # time.time(), canary weight, canary requests, canary 5xx


@dataclass(frozen=True)
class BreachConfig:
    intervals: tuple[float, ...] = (1.0, 5.0, 30.0)
    runs: int = 12  # per interval, and for the seed's baseline
    window: float = 60.0  # seconds each weight is held (the seed: 600)
    offsets: tuple[float, float] = (0.15, 0.85)  # the breach falls in this part of the first window
    inconclusive_limit: int = 10  # the first seconds at 5% have no data yet; see `tidegate_spec`


@dataclass
class BreachRun:
    who: str  # "tidegate" or "seed"
    interval: float | None
    app: str
    offset: float
    image: str
    weighted_at: float | None = None  # the canary first got traffic (time.time())
    turned_at: float | None = None  # its image turned bad
    first_bad: float | None = None  # its first 5xx
    weight_zero: float | None = None  # its weight became 0 again
    outcome: str = ""
    reason: str = ""
    bad_requests: int = 0  # answered by the canary after it turned bad
    bad_errors: int = 0  # of which 5xx
    failing_measurement: float | None = None  # tidegate: when the measurement that failed was scheduled
    measure_times: list[float] = field(default_factory=list)  # tidegate: when each measurement was scheduled
    history_events: int | None = None
    history_bytes: int | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "seed" if self.who == "seed" else f"tidegate {self.interval:g}s"

    @property
    def breach_to_rollback(self) -> float | None:
        if self.first_bad is None or self.weight_zero is None:
            return None
        return self.weight_zero - self.first_bad


@dataclass
class BreachResult:
    config: BreachConfig
    scrape_seconds: float
    rate: float
    runs: list[BreachRun]
    wall_seconds: float

    def group(self, label: str) -> list[BreachRun]:
        return [run for run in self.runs if run.label == label]

    def labels(self) -> list[str]:
        return [f"tidegate {i:g}s" for i in self.config.intervals] + ["seed"]


def tidegate_spec(app: str, image: str, interval: float, config: BreachConfig, prometheus_url: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for weight in (5, 25, 50, 100):
        steps += [{"setWeight": weight}, {"pause": {"duration": f"{config.window:g}s"}}]
    return {
        "app": app,
        "image": image,
        "strategy": {"type": "canary", "canary": {"steps": steps}},
        "analysis": {
            "prometheus": {"url": prometheus_url},
            "interval": f"{interval:g}s",
            # Measured every second, the first moments at 5% (no canary request in the 1m window
            # yet) are inconclusive several times in a row: room for that, so that a run is never
            # rolled back for missing data before its breach.
            "inconclusiveLimit": config.inconclusive_limit,
        },
    }


class Watcher:
    """Polls the canary weight and the canary's counters of every run's app."""

    def __init__(self, stack: Stack, runs: list[BreachRun]) -> None:
        self.stack, self.runs = stack, runs

    async def run(self) -> None:
        traffic, stack = self.stack.traffic, self.stack
        while True:
            now = time.time()
            totals = traffic.totals()
            for run in self.runs:
                if run.weight_zero is not None and now - run.weight_zero > 15:
                    continue  # long done: stop sampling it
                weight = stack.canary_weight(run.app) or 0
                requests = sum(n for (a, ns, v, _), n in totals.items() if a == run.app and ns == NAMESPACE and v == "v2")
                errors = totals.get((run.app, NAMESPACE, "v2", "500"), 0)
                run.samples.append((now, weight, requests, errors))
                if weight > 0 and run.weighted_at is None:
                    run.weighted_at = now
                elif weight == 0 and run.weighted_at is not None and run.weight_zero is None:
                    run.weight_zero = now
            await asyncio.sleep(POLL)


async def turn_bad_on_time(stack: Stack, run: BreachRun, counts: dict[str, Any]) -> None:
    """`offset` seconds after the canary got traffic, its image turns bad."""
    while run.weighted_at is None:
        await asyncio.sleep(POLL)
    await asyncio.sleep(max(0.0, run.weighted_at + run.offset - time.time()))
    if run.weight_zero is not None:
        return  # rolled back before its breach (reported as such)
    counts[run.app] = stack.traffic.mark()
    stack.turn_bad(run.image)
    run.turned_at = time.time()


async def run_tidegate(stack: Stack, run: BreachRun, config: BreachConfig) -> None:
    assert run.interval is not None
    spec = parse_spec(tidegate_spec(run.app, run.image, run.interval, config, stack.prometheus_url))
    handle = await start_deployment(stack.client, spec, "bench", task_queue=stack.task_queue)
    result: DeploymentResult = await handle.result()
    run.outcome, run.reason = result.outcome.value, result.reason
    line: Timeline = await fetch_timeline(handle)
    run.history_events, run.history_bytes = line.events, line.bytes
    measures = run.measure_times = [a.scheduled for a in line.activities if a.name == "measure"]
    if run.weight_zero is not None:
        before = [t for t in measures if t <= run.weight_zero]
        run.failing_measurement = before[-1] if before else None


async def run_seed(stack: Stack, run: BreachRun, config: BreachConfig, threads: ThreadPoolExecutor) -> None:
    controller = CanaryController(str(stack.kubeconfig), stack.prometheus_url, run.app, NAMESPACE, window=config.window)
    promoted = await asyncio.get_running_loop().run_in_executor(threads, controller.promote_canary)
    run.outcome = "promoted" if promoted else "rolledBack"
    run.reason = next((what for _, what in reversed(controller.log) if "unhealthy" in what), "")


def offsets(config: BreachConfig) -> list[float]:
    low, high = config.offsets
    return [config.window * (low + (high - low) * (k + 0.5) / config.runs) for k in range(config.runs)]


async def run_breach(stack: Stack, config: BreachConfig, say: Callable[[str], None] = print) -> BreachResult:
    began = time.monotonic()
    tag = f"{int(time.time()) % 100000:05d}"
    runs: list[BreachRun] = []
    for interval in config.intervals:
        for k, offset in enumerate(offsets(config)):
            app = f"b{tag}-i{interval:g}-{k:02d}".replace(".", "p")
            runs.append(BreachRun("tidegate", interval, app, offset, f"{app}:2.0-turns"))
    for k, offset in enumerate(offsets(config)):
        app = f"b{tag}-seed-{k:02d}"
        runs.append(BreachRun("seed", None, app, offset, f"{app}:2.0-turns"))

    say(f"breach: setting up {len(runs)} apps")
    async with stack.kube_api() as api:
        await gather_limited(
            create_stable(api, run.app) if run.who == "tidegate" else create_seed_workloads(api, run.app, run.image)
            for run in runs
        )
        await wait_ready(stack, [f"{r.app}-stable" for r in runs] + [f"{r.app}-canary" for r in runs if r.who == "seed"])
        await gather_limited(create_seed_routing(api, run.app) for run in runs if run.who == "seed")

    watcher = Watcher(stack, runs)
    counts: dict[str, Any] = {}
    watch = asyncio.create_task(watcher.run())
    breaches = [asyncio.create_task(turn_bad_on_time(stack, run, counts)) for run in runs]
    say(f"breach: {len(runs)} canaries at once ({config.runs} per interval {', '.join(f'{i:g}s' for i in config.intervals)} "
        f"and {config.runs} of the seed's), window {config.window:g}s")
    # The seed's script sleeps its windows in a thread: one each, all at once, and none taken from
    # the event loop's default executor (aiohttp needs it for every request it makes).
    threads = ThreadPoolExecutor(max_workers=max(1, sum(run.who == "seed" for run in runs)), thread_name_prefix="seed")

    async def one(run: BreachRun) -> None:
        try:
            await asyncio.wait_for(
                run_tidegate(stack, run, config) if run.who == "tidegate" else run_seed(stack, run, config, threads),
                timeout=4 * config.window + 180,
            )
        except TimeoutError:
            run.outcome, run.reason = "timeout", f"not finished after {4 * config.window + 180:g} s"

    try:
        await asyncio.gather(*(one(run) for run in runs))
        await asyncio.sleep(1.0)  # a last look at the weights and counters
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
        watch.cancel()
        for task in breaches:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch

    for run in runs:
        first = stack.traffic.first_error_at(run.app, NAMESPACE, "v2")
        run.first_bad = first.timestamp() if first is not None else None
        mark = counts.get(run.app)
        if mark is not None:
            bad = stack.traffic.version_counts(run.app, NAMESPACE, since=mark).get("v2")
            if bad is not None:
                run.bad_requests, run.bad_errors = bad.requests, bad.errors
    return BreachResult(config, stack.settings.scrape_seconds, stack.settings.rate, runs, time.monotonic() - began)
