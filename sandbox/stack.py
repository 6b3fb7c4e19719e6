"""The whole sandbox in one context manager: cluster API, simulated traffic, /metrics, Prometheus.

The demo, `python -m sandbox` and the end-to-end tests run tidegate against this stack, so the
worker sees what it would see in production: a Kubernetes API (kubeconfig in the workdir) and a
Prometheus whose PromQL answers follow the routing the workflows set::

    async with run_sandbox(Path(".sandbox")) as sandbox:
        ...  # KUBECONFIG=sandbox.kubeconfig, Prometheus at sandbox.prometheus_url
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sandbox.cluster import ClusterEmulator, serve_cluster, write_kubeconfig
from sandbox.prometheus import find_prometheus, run_prometheus
from sandbox.rules import Rules
from sandbox.traffic import TrafficSimulator

__all__ = ["Sandbox", "run_sandbox", "serve_metrics"]


@dataclass(frozen=True)
class Sandbox:
    cluster: ClusterEmulator
    kube_url: str
    kubeconfig: Path
    metrics_url: str  # the exposition itself: http://host:port/metrics
    prometheus_url: str | None  # None when started without Prometheus
    traffic: TrafficSimulator
    rules: Rules
    workdir: Path


def _reachable(host: str) -> str:
    """The address to reach a server bound to `host` (a wildcard bind answers on loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


@contextlib.asynccontextmanager
async def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `registry` at `/metrics` (port 0: a free one); yields that URL."""

    async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", metrics)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = aiohttp.web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{_reachable(host)}:{bound}/metrics"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def run_sandbox(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    kube_port: int = 0,
    metrics_port: int = 0,
    prometheus_port: int | None = 0,
    rules_file: Path | None = None,
    rate: float = 20.0,
    scrape_interval: str = "1s",
    rollout_seconds: float = 2.0,
    seed: int | None = None,
) -> AsyncIterator[Sandbox]:
    """Start the stack (ports 0: free ones; `prometheus_port=None`: no Prometheus) and stop it all on exit.

    Writes `workdir/kubeconfig`; Prometheus keeps its config, TSDB and log in `workdir/prometheus`.
    A bad rules file or a missing `prometheus` binary fails before anything starts.
    """
    workdir = Path(workdir)
    rules = Rules.load(rules_file)
    if prometheus_port is not None:
        find_prometheus()
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = workdir / "kubeconfig"
    async with contextlib.AsyncExitStack() as stack:
        cluster, kube_url = await stack.enter_async_context(serve_cluster(
            host, kube_port, rollout_seconds=rollout_seconds,
            is_image_ready=rules.is_ready, is_image_healthy=rules.is_healthy,
        ))
        kube_url = kube_url.replace(f"//{host}:", f"//{_reachable(host)}:", 1)
        write_kubeconfig(kubeconfig, kube_url)
        traffic = TrafficSimulator(cluster, rules, rate=rate, seed=seed)
        metrics_url = await stack.enter_async_context(serve_metrics(traffic.registry, host, metrics_port))
        await stack.enter_async_context(traffic)
        prometheus_url = None
        if prometheus_port is not None:
            target = metrics_url.split("//", 1)[1].split("/", 1)[0]
            prometheus_url = await stack.enter_async_context(
                run_prometheus([target], workdir / "prometheus", scrape_interval, port=prometheus_port)
            )
        yield Sandbox(cluster, kube_url, kubeconfig, metrics_url, prometheus_url, traffic, rules, workdir)
