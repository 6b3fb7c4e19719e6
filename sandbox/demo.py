"""`make demo`: tidegate's main job, end to end, on one machine, in about two minutes.

Starts the Temporal dev server (UI on :8233, tidegate's search attributes registered), the sandbox
(Kubernetes API, simulated traffic, real Prometheus) and the worker as a process of its own, then
runs three deployments at once: a good canary (promoted), a bad canary (rolled back by the
error-rate check), and a blue/green switch that waits for approval (given by the demo). The
terminal follows them; the Temporal UI shows the same runs. `--keep` leaves everything running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentResult, DeploymentStatus, Phase, load_spec_file
from sandbox.prometheus import PrometheusNotInstalled, find_prometheus
from sandbox.stack import Sandbox, run_sandbox
from starter import format_event, start_deployment
from workflows.analysis import describe_figures
from workflows.common import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "demo"
TEMPORAL_PORT, UI_PORT, KUBE_PORT, METRICS_PORT, PROMETHEUS_PORT = 7233, 8233, 8001, 9101, 9090


@dataclass
class Run:
    """One deployment the demo follows."""

    label: str
    spec_file: str
    image: str | None = None
    approve_as: str | None = None  # approve when it waits for approval
    handle: WorkflowHandle[Any, DeploymentResult] | None = None
    printed: int = 0
    measured: datetime | None = None  # the last measurement shown
    result: DeploymentResult | None = None
    started: float = field(default_factory=time.monotonic)


def ensure_prometheus() -> None:
    try:
        find_prometheus()
    except PrometheusNotInstalled:
        if os.geteuid() != 0:
            raise
        subprocess.run([str(ROOT / "scripts" / "install-prometheus.sh")], check=True)


async def start_temporal() -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        port=TEMPORAL_PORT,
        ui=True,
        ui_port=UI_PORT,
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )


def start_worker(sandbox: Sandbox) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{TEMPORAL_PORT}"}
    return subprocess.Popen(
        [sys.executable, "worker.py", "--kubeconfig", str(sandbox.kubeconfig)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=open(sandbox.workdir / "worker.log", "wb"),
    )


async def deploy(client: Client, run: Run) -> None:
    spec = load_spec_file(str(EXAMPLES / run.spec_file))
    if run.image:
        spec = spec.model_copy(update={"image": run.image})
    run.handle = await start_deployment(client, spec, requested_by="demo")
    run.started = time.monotonic()


async def follow(runs: list[Run]) -> None:
    """Print every run's events as they happen; approve the ones that wait for it."""
    while any(run.result is None for run in runs):
        for run in runs:
            if run.result is not None or run.handle is None:
                continue
            try:
                status = await run.handle.query("status", result_type=DeploymentStatus)
            except Exception:  # between workflow tasks: the next round catches up
                continue
            for event in status.events[run.printed :]:
                print(f"{run.label:<10} {format_event(event)}", flush=True)
            run.printed = len(status.events)
            measurement = status.last_measurement
            if measurement is not None and measurement.at != run.measured:  # the analysis, live
                run.measured = measurement.at
                print(
                    f"{run.label:<10} {measurement.at:%Y-%m-%dT%H:%M:%SZ}  {'measured':<13} "
                    f"{describe_figures(measurement.checks)} at {status.weight}%: {measurement.verdict.value}",
                    flush=True,
                )
            if status.phase == Phase.AWAITING_APPROVAL and run.approve_as:
                await run.handle.signal("approve", Decision(by=run.approve_as, reason="demo: preview looks good"))
                run.approve_as = None
            if status.result is not None:
                run.result = await run.handle.result()
        await asyncio.sleep(0.5)


def breach_to_rollback(sandbox: Sandbox, result: DeploymentResult) -> str:
    """From the canary's first 5xx (the sandbox's own counters) to its weight 0 (the run's record)."""
    first_bad = sandbox.traffic.first_error_at(result.app, result.namespace, "v2")
    weight_zero = next(
        (e.at for e in reversed(result.events) if e.kind == "weight" and e.message.startswith("v2 0%")), None
    )
    if first_bad is None or weight_zero is None:
        return "-"
    return f"{(weight_zero - first_bad).total_seconds():.1f} s"


def summary(sandbox: Sandbox, runs: list[Run]) -> None:
    print()
    print(f"{'deployment':<10} {'outcome':<11} {'took':>6}  {'breach→weight 0':>15}  reason")
    for run in runs:
        result = run.result
        assert result is not None
        took = (result.finished_at - result.started_at).total_seconds()
        rollback = breach_to_rollback(sandbox, result) if result.outcome.value == "rolledBack" else ""
        reason = result.reason.split(" (bound ")[0]  # the check, its value and its bound
        print(f"{run.label:<10} {result.outcome.value:<11} {took:>5.0f}s  {rollback:>15}  {reason}")


async def wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def main(keep: bool) -> int:
    ensure_prometheus()
    workdir = ROOT / ".demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    began = time.monotonic()
    env = await start_temporal()
    try:
        async with run_sandbox(
            workdir, kube_port=KUBE_PORT, metrics_port=METRICS_PORT, prometheus_port=PROMETHEUS_PORT, rollout_seconds=1.0
        ) as sandbox:
            worker = start_worker(sandbox)
            try:
                print(f"Temporal UI:  http://localhost:{UI_PORT}/namespaces/default/workflows")
                print(f"Prometheus:   {sandbox.prometheus_url}")
                print(f"Kubernetes:   {sandbox.kube_url}  (kubeconfig {sandbox.kubeconfig.relative_to(ROOT)})")
                print()
                client = env.client
                print("first deployments (no previous version: straight to stable / blue)")
                first = [
                    Run("shop", "shop-canary.yaml", image="shop:1.0"),
                    Run("cart", "cart-canary-bad.yaml", image="cart:1.0"),
                    Run("pay", "pay-blue-green.yaml", image="pay:1.0", approve_as="demo-approver"),
                ]
                for run in first:
                    await deploy(client, run)
                await follow(first)
                print()
                print("the three deployments of the demo, at once")
                runs = [
                    Run("shop", "shop-canary.yaml"),
                    Run("cart", "cart-canary-bad.yaml"),
                    Run("pay", "pay-blue-green.yaml", approve_as="demo-approver"),
                ]
                for run in runs:
                    await deploy(client, run)
                    print(f"{run.label:<10} http://localhost:{UI_PORT}/namespaces/default/workflows/{run.handle.id if run.handle else ''}")
                await follow(runs)
                summary(sandbox, runs)
                print(f"\ndemo finished in {time.monotonic() - began:.0f} s")
                if keep:
                    print(f"\neverything keeps running (--keep): Temporal UI http://localhost:{UI_PORT}; Ctrl-C stops it")
                    await wait_for_stop()
            finally:
                worker.terminate()
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()
        expected = {"shop": "promoted", "cart": "rolledBack", "pay": "promoted"}
        outcomes = {run.label: run.result.outcome.value if run.result else None for run in runs}
        return 0 if outcomes == expected else 1
    finally:
        await env.shutdown()


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C, so that everything the demo started is stopped on the way out."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave everything running to explore the UI")
    arguments = parser.parse_args()
    try:
        code = asyncio.run(main(arguments.keep))
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    os._exit(code)
