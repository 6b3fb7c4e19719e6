"""End to end on the sandbox stack: the Temporal dev server, the worker as a process of its own,
the simulated cluster with its traffic, and a real Prometheus measuring it.

What is asserted is what a user would check: the cluster's final state, the run's outcome and
record, and how quickly a bad canary stopped getting traffic.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from deploy_models import DeploymentResult, DeploymentStatus, Outcome, Phase, parse_spec
from sandbox.cluster import DEPLOYMENTS, SERVICES, VIRTUALSERVICES
from sandbox.stack import Sandbox, run_sandbox
from starter import start_deployment
from tests.conftest import eventually
from tests.history import ActivityRun, activity_runs, timer_runs

ROOT = Path(__file__).resolve().parent.parent
INTERVAL_SECONDS = 1
RATE_WINDOW_SECONDS = 10
SCRAPE_SECONDS = 1
# The error rate over a short window, so the bound on the reaction time is tight enough to mean something.
ERROR_RATE = (
    'sum(rate(http_requests_total{app="{{app}}",namespace="{{namespace}}",version="{{version}}",status=~"5.."}[WINDOW]))'
    ' / sum(rate(http_requests_total{app="{{app}}",namespace="{{namespace}}",version="{{version}}"}[WINDOW]))'
).replace("WINDOW", f"{RATE_WINDOW_SECONDS}s")


@dataclass
class Stack:
    env: WorkflowEnvironment
    sandbox: Sandbox
    task_queue: str
    worker: subprocess.Popen[bytes]

    def start_worker(self) -> None:
        environment = {**os.environ, "TEMPORAL_ADDRESS": self.env.client.service_client.config.target_host}
        self.worker = subprocess.Popen(
            [sys.executable, "worker.py", "--kubeconfig", str(self.sandbox.kubeconfig), "--task-queue", self.task_queue],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=open(self.sandbox.workdir / "worker.log", "ab"),
        )

    def stop_worker(self, how: int = signal.SIGTERM) -> None:
        self.worker.send_signal(how)
        self.worker.wait(timeout=30)

    async def deploy(self, document: dict[str, Any], image: str | None = None) -> WorkflowHandle[Any, DeploymentResult]:
        spec = parse_spec({**document, **({"image": image} if image else {})})
        return await start_deployment(self.env.client, spec, "e2e", task_queue=self.task_queue)

    def get(self, resource: Any, name: str) -> dict[str, Any]:
        found = self.sandbox.cluster.get(resource, "default", name)
        assert found is not None, name
        return found


@pytest.fixture(scope="module")
async def stack(dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("sandbox")
    async with run_sandbox(workdir, rollout_seconds=0.5, rate=40.0) as sandbox:
        stack = Stack(dev_env, sandbox, f"e2e-{workdir.name}", None)  # type: ignore[arg-type]
        stack.start_worker()
        try:
            yield stack
        finally:
            stack.stop_worker()


def canary(app: str, image: str, steps: list[dict[str, Any]], sandbox: Sandbox) -> dict[str, Any]:
    proxy = f"{sandbox.kube_url}/api/v1/namespaces/{{namespace}}/services/{{service}}:80/proxy/health"
    return {
        "app": app,
        "image": image,
        "replicas": 2,
        "strategy": {
            "type": "canary",
            "canary": {"steps": steps, "smokeTest": {"url": proxy}, "progressDeadline": "30s"},
        },
        "analysis": {
            "prometheus": {"url": sandbox.prometheus_url},
            "interval": f"{INTERVAL_SECONDS}s",
            "inconclusiveLimit": 10,
            "checks": [
                # 0.05: the sandbox's good versions fail 0.1% of requests, which over a 10 s window of a
                # few dozen requests can read as a few percent; a `-bad` version fails 20%.
                {"name": "error-rate", "query": ERROR_RATE, "max": 0.05},
                {
                    "name": "p99-latency",
                    "query": 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{app="{{app}}",version="{{version}}"}[10s])))',
                    "max": 1.0,
                },
            ],
        },
    }


# The activities that write to the cluster (the `ensure_*` ones only when something is missing).
KUBERNETES_WRITES = {"ensure_service", "ensure_routing", "apply_deployment", "set_canary_weight", "scale_deployment"}


def is_write(run: ActivityRun) -> bool:
    """A Kubernetes write. (set_canary_weight also serves checks that the weight is still what
    the run set, before each measurement: those write nothing.)"""
    return run.name in KUBERNETES_WRITES and not run.summary.startswith("check canary weight")


def weights(stack: Stack, app: str) -> list[int]:
    route = stack.get(VIRTUALSERVICES, app)["spec"]["http"][0]["route"]
    return [destination["weight"] for destination in route]


def canary_weight(route: list[dict[str, Any]]) -> int:
    """The canary subset's weight in a VirtualService route."""
    return next(destination["weight"] for destination in route if destination["destination"]["subset"] == "v2")


def weight_writes(stack: Stack, app: str) -> tuple[list[int], list[int]]:
    """What the cluster saw of an app's VirtualService: the canary weight of each stored version
    (creation first), and of each PATCH request that reached the API server (applied or not)."""
    cluster = stack.sandbox.cluster
    path = f"/apis/networking.istio.io/v1/namespaces/default/virtualservices/{app}"
    versions = [version for version in cluster.objects[VIRTUALSERVICES, "default", app].history if version is not None]
    patches = [request for request in cluster if request.method == "PATCH" and request.url.path == path]
    return (
        [canary_weight(version["spec"]["http"][0]["route"]) for version in versions],
        [canary_weight(request.data[1]["value"]) for request in patches],
    )


async def test_bad_canary_is_rolled_back_within_interval_window_and_scrape(stack: Stack) -> None:
    steps = [{"setWeight": 20}, {"pause": {"duration": "60s"}}, {"setWeight": 100}]
    document = canary("cart", "cart:2.0-bad", steps, stack.sandbox)
    assert (await (await stack.deploy(document, image="cart:1.0")).result()).outcome == Outcome.PROMOTED

    result = await asyncio.wait_for((await stack.deploy(document)).result(), timeout=120)

    assert result.outcome == Outcome.ROLLED_BACK
    assert "error-rate" in result.reason and "above 0.05" in result.reason
    assert weights(stack, "cart") == [100, 0]
    assert stack.get(DEPLOYMENTS, "cart-canary")["spec"]["replicas"] == 0
    assert stack.get(DEPLOYMENTS, "cart-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == "cart:1.0"
    failed = result.failed_measurement
    assert failed is not None and failed.checks[0].value is not None and failed.checks[0].value > 0.05

    first_bad = stack.sandbox.traffic.first_error_at("cart", "default", "v2")
    weight_zero = next(e.at for e in reversed(result.events) if e.kind == "weight" and e.message.startswith("v2 0%"))
    assert first_bad is not None
    bound = timedelta(seconds=INTERVAL_SECONDS + RATE_WINDOW_SECONDS + SCRAPE_SECONDS)
    assert timedelta(0) < weight_zero - first_bad <= bound


async def test_good_canary_is_promoted(stack: Stack) -> None:
    steps = [{"setWeight": 50}, {"pause": {"duration": "4s"}}, {"setWeight": 100}, {"pause": {"duration": "2s"}}]
    document = canary("shop", "shop:2.0", steps, stack.sandbox)
    await (await stack.deploy(document, image="shop:1.0")).result()

    result = await asyncio.wait_for((await stack.deploy(document)).result(), timeout=120)

    assert result.outcome == Outcome.PROMOTED, result.reason
    assert stack.get(DEPLOYMENTS, "shop-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == "shop:2.0"
    assert stack.get(DEPLOYMENTS, "shop-canary")["spec"]["replicas"] == 0
    assert weights(stack, "shop") == [100, 0]
    passed = [e for e in result.events if e.kind == "analysis" and "measurement(s) passed" in e.message]
    assert len(passed) == 2 and all("error-rate" in e.message for e in passed)


async def test_blue_green_approved_from_the_command_line(stack: Stack) -> None:
    proxy = f"{stack.sandbox.kube_url}/api/v1/namespaces/{{namespace}}/services/{{service}}:80/proxy/health"
    document = {
        "app": "pay",
        "image": "pay:2.0",
        "strategy": {
            "type": "blueGreen",
            "blueGreen": {"previewService": "pay-preview", "smokeTest": {"url": proxy}, "approval": {}, "scaleDownDelay": "1s"},
        },
    }
    first = await stack.deploy(document, image="pay:1.0")
    await eventually(lambda: awaiting(first), what="the first deployment to wait for approval", timeout=60)
    await approve(stack, "pay")
    assert (await first.result()).outcome == Outcome.PROMOTED

    handle = await stack.deploy(document)
    await eventually(lambda: awaiting(handle), what="approval", timeout=60)
    assert stack.get(SERVICES, "pay")["spec"]["selector"]["version"] == "blue"
    await approve(stack, "pay")
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    assert stack.get(SERVICES, "pay")["spec"]["selector"]["version"] == "green"
    approved = next(e for e in result.events if e.kind == "approved")
    assert approved.by == "release-manager"
    assert stack.sandbox.cluster.get(DEPLOYMENTS, "default", "pay-blue") is None


async def test_worker_killed_mid_pause_resumes_and_completes(stack: Stack) -> None:
    pause = timedelta(seconds=8)
    steps = [{"setWeight": 30}, {"pause": {"duration": "8s"}}, {"setWeight": 100}]
    document = canary("book", "book:2.0", steps, stack.sandbox)
    await (await stack.deploy(document, image="book:1.0")).result()
    handle = await stack.deploy(document)

    async def observing() -> bool:
        status = await handle.query("status", result_type=DeploymentStatus)
        return status.phase == Phase.OBSERVING and status.weight == 30

    await eventually(observing, what="the pause at 30%", timeout=60)
    stack.stop_worker(signal.SIGKILL)
    killed = datetime.now(UTC)
    assert weights(stack, "book") == [70, 30]  # nothing moves while no worker runs
    stack.start_worker()
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.outcome == Outcome.PROMOTED
    assert stack.get(DEPLOYMENTS, "book-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == "book:2.0"
    assert weights(stack, "book") == [100, 0]
    moves = [(e.message.split(",")[0], e.at) for e in result.events if e.kind == "weight"]
    assert [move for move, _ in moves] == ["v2 30%", "v2 100%", "v2 0%"]  # each step applied once

    # The cluster saw each weight written once: created at 0%, then one PATCH per move.
    assert weight_writes(stack, "book") == ([0, 30, 100, 0], [30, 100, 0])

    # The pause lasted its 8 s across the kill, and the new worker carried it on (replaying the
    # history), not started it again: the pause is a timer per analysis interval, each fired
    # once, none due after the pause's first start plus 8 s.
    moved = dict(moves)
    assert moved["v2 30%"] < killed < moved["v2 100%"]
    assert moved["v2 100%"] - moved["v2 30%"] >= pause
    timers = [timer for timer in await timer_runs(handle) if timer.summary == "step 1 pause at 30%"]
    assert timers and all(len(timer.fired) == 1 for timer in timers)
    assert all(timer.due <= timers[0].started + pause + timedelta(seconds=1) for timer in timers), timers
    # and no write was repeated: each ended on its first attempt
    writes = [run for run in await activity_runs(handle) if is_write(run)]
    assert [run.summary for run in writes if run.name == "set_canary_weight"] == [
        "canary weight 30%", "canary weight 100%", "canary weight 0%"
    ]
    assert all(run.completed and run.attempt == 1 for run in writes), [(run.summary, run.attempt) for run in writes]


async def awaiting(handle: WorkflowHandle[Any, Any]) -> bool:
    status = await handle.query("status", result_type=DeploymentStatus)
    return status.phase == Phase.AWAITING_APPROVAL


async def approve(stack: Stack, app: str) -> None:
    environment = {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.env.client.service_client.config.target_host,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", "approve", app, "--by", "release-manager", "--reason", "checked the preview",
        cwd=ROOT, env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
