"""Deployments one worker carries (issue item 3).

N canary deployments in flight at once, one per simulated app, each in a long pause at 5% with
the default analysis every 30 s (error rate and p99 of the canary's own requests, two PromQL
queries per measurement), all carried by one `python worker.py`. N grows in stages (100, 300,
1,000 by default; `--full` goes on until something breaks): each stage starts the new
deployments, waits until all of them are in their pause, then watches a steady window.

Per stage: how long the new deployments took to reach their pause; the worker's CPU (of one core)
and RSS over the window, and the same for the dev server, Prometheus and the bench process (the
sandbox: emulated API, traffic, /metrics); from a sample of histories, how late each analysis
measurement ran against its schedule (the timer's due time → the `measure` activity starting:
timer firing, workflow task, schedule-to-start) and the schedule-to-start latency of activities
and workflow tasks in the window.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.apps import create_stable, gather_limited, wait_ready
from bench.history import Timeline, fetch_timeline, measurement_lateness
from bench.procs import ProcessWatch, Usage, find_child, peak_rss_bytes
from bench.stack import Stack, StackSettings
from bench.stats import percentile
from deploy_models import parse_spec
from starter import start_deployment
from workflows import workflow_id

# The sandbox for a thousand apps: Prometheus scrapes every 5 s (production setups use 15-60 s),
# the simulated controller and traffic tick every 0.5 s instead of 0.05/0.1 s, so that the
# simulation leaves the CPU to what is measured.
CARRY_SETTINGS = StackSettings(scrape_seconds=5.0, rollout_seconds=1.0, traffic_tick=0.5, controller_tick=0.5)
WEIGHT = 5
PAUSE_MEASUREMENTS = 1_000  # each canary's pause, in measurements


@dataclass(frozen=True)
class CarryConfig:
    sizes: tuple[int, ...] = (100, 300, 1000)
    interval: float = 30.0
    window: float = 75.0  # steady seconds watched per stage (two and a half analysis rounds)
    sample: int = 120  # histories read per stage
    ramp_timeout: float = 300.0  # seconds for a stage's new deployments to reach their pause (or 0.5 s each)
    lateness_limit: float | None = None  # p99 lateness that counts as broken (default: the interval)


@dataclass
class CarryStage:
    n: int
    started: int  # new deployments started in this stage
    ramp_seconds: float
    in_pause: int  # deployments in their pause at the end of the ramp
    still_in_pause: int  # ... and at the end of the window
    usage: dict[str, Usage]
    ramp_usage: dict[str, Usage]
    worker_hwm: int
    lateness: list[float] = field(default_factory=list)
    activity_schedule_to_start: list[float] = field(default_factory=list)
    workflow_task_schedule_to_start: list[float] = field(default_factory=list)
    measurements: int = 0  # in the sample, within the window
    sampled: int = 0
    broke: str = ""
    # the worker's own metrics: its workflow cache at the end of the window, and over the window the
    # workflow tasks that missed the cache, the runs evicted to make room, and the replays
    cached: int = 0
    cache_misses: int = 0
    evictions: int = 0
    replays: int = 0


@dataclass
class CarryResult:
    config: CarryConfig
    settings: StackSettings
    stages: list[CarryStage]
    wall_seconds: float
    stopped: str = ""


def carry_spec(app: str, interval: float, prometheus_url: str) -> dict[str, Any]:
    return {
        "app": app,
        "image": f"{app}:2.0-steady",
        "strategy": {
            "type": "canary",
            # long past the benchmark, and within what one run holds (deploy_models.MEASUREMENT_BUDGET)
            "canary": {"steps": [{"setWeight": WEIGHT}, {"pause": {"duration": f"{PAUSE_MEASUREMENTS * interval:g}s"}}], "promoteFromLastWeight": True},
        },
        "analysis": {"prometheus": {"url": prometheus_url}, "interval": f"{interval:g}s"},
    }


WORKER_METRICS = (
    "temporal_sticky_cache_size",
    "temporal_sticky_cache_hit_total",
    "temporal_sticky_cache_miss_total",
    "temporal_sticky_cache_total_forced_eviction_total",
    "temporal_workflow_task_replay_latency_count",
)


async def worker_metrics(stack: Stack) -> dict[str, float]:
    """The worker's own SDK metrics of interest, each summed over its series (0 when absent)."""
    totals = dict.fromkeys(WORKER_METRICS, 0.0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(stack.worker_metrics_url) as response:
                text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return totals
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def in_pause(stack: Stack, apps: list[str]) -> int:
    return sum(1 for app in apps if stack.canary_weight(app) == WEIGHT)


async def run_carry(stack: Stack, config: CarryConfig, say: Callable[[str], None] = print) -> CarryResult:
    began = time.monotonic()
    pids = {"worker": stack.worker.pid, "bench (sandbox)": os.getpid()}
    for name, comm in (("dev server", "temporal"), ("prometheus", "prometheus")):
        pid = find_child(comm)
        if pid is not None:
            pids[name] = pid
    watch = ProcessWatch(pids)
    stages: list[CarryStage] = []
    apps: list[str] = []
    tag = f"{int(time.time()) % 100000:05d}"
    limit = config.lateness_limit if config.lateness_limit is not None else config.interval
    result = CarryResult(config, stack.settings, stages, 0.0)
    async with watch.running():
        for n in config.sizes:
            new = [f"c{tag}-{k:05d}" for k in range(len(apps), n)]
            say(f"carry: {n} deployments in flight ({len(new)} new)")
            async with stack.kube_api() as api:
                await gather_limited((create_stable(api, app) for app in new), limit=32)
            await wait_ready(stack, [f"{app}-stable" for app in new], timeout=config.ramp_timeout)
            apps += new

            watch.reset()
            ramp_began = time.monotonic()

            async def start(app: str) -> None:
                spec = parse_spec(carry_spec(app, config.interval, stack.prometheus_url))
                await start_deployment(stack.client, spec, "bench", task_queue=stack.task_queue)

            await gather_limited((start(app) for app in new), limit=32)
            ramp_timeout = max(config.ramp_timeout, 0.5 * len(new))  # at least 2 starts a second
            deadline = ramp_began + ramp_timeout
            reached = in_pause(stack, apps)
            while reached < len(apps) and time.monotonic() < deadline and stack.worker.poll() is None:
                await asyncio.sleep(1.0)
                reached = in_pause(stack, apps)
            ramp = time.monotonic() - ramp_began
            ramp_usage = watch.window()

            watch.reset()
            window_began = time.time()
            metrics_before = await worker_metrics(stack)
            await asyncio.sleep(config.window)
            metrics_after = await worker_metrics(stack)
            window_ended = time.time()
            usage = watch.window()
            stage = CarryStage(
                n=n, started=len(new), ramp_seconds=ramp, in_pause=reached, still_in_pause=in_pause(stack, apps),
                usage=usage, ramp_usage=ramp_usage, worker_hwm=peak_rss_bytes(stack.worker.pid) or 0,
                cached=int(metrics_after["temporal_sticky_cache_size"]),
                cache_misses=int(metrics_after["temporal_sticky_cache_miss_total"] - metrics_before["temporal_sticky_cache_miss_total"]),
                evictions=int(
                    metrics_after["temporal_sticky_cache_total_forced_eviction_total"]
                    - metrics_before["temporal_sticky_cache_total_forced_eviction_total"]
                ),
                replays=int(
                    metrics_after["temporal_workflow_task_replay_latency_count"]
                    - metrics_before["temporal_workflow_task_replay_latency_count"]
                ),
            )
            chosen = random.Random(n).sample(apps, min(config.sample, len(apps)))
            lines: list[Timeline] = await gather_limited(
                (fetch_timeline(stack.client.get_workflow_handle(workflow_id("default", app))) for app in chosen), limit=16
            )
            for line in lines:
                late = measurement_lateness(line, window_began, window_ended)
                stage.lateness += late
                stage.measurements += len(late)
                stage.activity_schedule_to_start += [
                    a.started - a.scheduled for a in line.activities
                    if a.started is not None and window_began <= a.scheduled < window_ended
                ]
                stage.workflow_task_schedule_to_start += [
                    t.started - t.scheduled for t in line.workflow_tasks
                    if t.started is not None and window_began <= t.scheduled < window_ended
                ]
            stage.sampled = len(lines)
            stages.append(stage)

            worst = max(stage.lateness, default=0.0)
            if stack.worker.poll() is not None:
                stage.broke = f"the worker exited ({stack.worker.returncode})"
            elif reached < len(apps):
                stage.broke = f"only {reached} of {len(apps)} deployments reached their pause within {ramp_timeout:g}s"
            elif stage.still_in_pause < len(apps):
                stage.broke = f"{len(apps) - stage.still_in_pause} deployment(s) left their pause (rolled back)"
            elif stage.lateness and percentile(stage.lateness, 0.99) > limit:
                stage.broke = f"measurements ran more than {limit:g}s late (p99; worst {worst:.1f}s)"
            say(
                f"carry: N={n}: ramp {ramp:.0f}s, worker {usage['worker'].cpu_percent:.0f}% CPU "
                f"{usage['worker'].peak_rss / 2**20:.0f} MiB, {stage.measurements} measurements sampled"
                + (f"; broke: {stage.broke}" if stage.broke else "")
            )
            if stage.broke:
                result.stopped = f"N={n}: {stage.broke}"
                break
    result.wall_seconds = time.monotonic() - began
    return result
