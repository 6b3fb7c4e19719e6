"""A real Prometheus scraping a small in-process exporter, for tests of PromQL-based analysis.

The root conftest registers these fixtures (`pytest_plugins`), so one Prometheus serves the
whole session: give each test its own `app`
label so that tests do not see each other's traffic.

`rate()` needs two samples, and a counter's first sample must be the value before the traffic,
or the increase is lost. So a test declares its series (at 0), waits for a scrape, sends the
traffic and waits for another scrape::

    lab.declare("shop", "v2")
    await lab.scraped()
    lab.serve("shop", "v2", 95)
    lab.serve("shop", "v2", 5, status="500")
    await lab.scraped()
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from sandbox.prometheus import PrometheusNotInstalled, find_prometheus, run_prometheus, wait_for_scrape

INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-prometheus.sh"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The `prometheus` binary, installed by scripts/install-prometheus.sh when missing (CI)."""
    try:
        return find_prometheus()
    except PrometheusNotInstalled:
        done = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"{INSTALL_SCRIPT.name} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return find_prometheus()


@dataclass
class PrometheusLab:
    """An exporter of `http_requests_total` and `http_request_duration_seconds`, scraped every 1s."""

    url: str
    target: str
    registry: CollectorRegistry
    requests: Counter
    durations: Histogram

    def declare(
        self, app: str, version: str, namespace: str = "default", statuses: Sequence[str] = ("200", "500")
    ) -> None:
        """Export the series at 0, so that the first scrape records the value before traffic."""
        for status in statuses:
            self.requests.labels(app, namespace, version, status)
        self.durations.labels(app, namespace, version)

    def serve(
        self,
        app: str,
        version: str,
        count: int,
        status: str = "200",
        duration: float = 0.05,
        namespace: str = "default",
    ) -> None:
        """Record `count` requests answered with `status` after `duration` seconds."""
        self.requests.labels(app, namespace, version, status).inc(count)
        histogram = self.durations.labels(app, namespace, version)
        for _ in range(count):
            histogram.observe(duration)

    async def scraped(self, timeout: float = 15.0) -> float:
        """Wait for a scrape that started after now: everything exported so far is stored."""
        return await wait_for_scrape(self.url, self.target, after=time.time(), timeout=timeout)


@pytest.fixture(scope="session")
async def prometheus_lab(
    prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PrometheusLab]:
    registry = CollectorRegistry()
    requests = Counter(
        "http_requests_total", "HTTP requests.", ["app", "namespace", "version", "status"], registry=registry
    )
    durations = Histogram(
        "http_request_duration_seconds",
        "HTTP request durations.",
        ["app", "namespace", "version"],
        buckets=BUCKETS,
        registry=registry,
    )
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    target = f"127.0.0.1:{server.server_port}"
    try:
        async with run_prometheus([target], tmp_path_factory.mktemp("prometheus")) as url:
            lab = PrometheusLab(url, target, registry, requests, durations)
            await wait_for_scrape(url, target, timeout=30)
            yield lab
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
