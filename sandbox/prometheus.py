"""A real Prometheus server for tests and the demo, started as a subprocess.

Canary analysis is only as good as its PromQL, so the metrics tests run the queries against the
real `prometheus` binary (Debian's `prometheus` package, installed by
`scripts/install-prometheus.sh`) rather than a fake that would agree with any query::

    async with run_prometheus(["127.0.0.1:8000"], tmp_path) as url:
        await wait_for_scrape(url, "127.0.0.1:8000")
        ...  # query `url`
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import yaml

__all__ = [
    "PrometheusNotInstalled",
    "find_prometheus",
    "free_port",
    "run_prometheus",
    "wait_for_scrape",
    "write_config",
]

INSTALL_HINT = (
    "install the Debian package 'prometheus' "
    "(run scripts/install-prometheus.sh as root, or apt-get install --no-install-recommends prometheus)"
)
_POLL = 0.05


class PrometheusNotInstalled(RuntimeError):
    """No `prometheus` binary on PATH."""


def find_prometheus() -> str:
    """The `prometheus` binary on PATH, or a PrometheusNotInstalled saying how to get it."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusNotInstalled(f"no 'prometheus' binary on PATH: {INSTALL_HINT}")
    return binary


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; another process could take it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(path: Path, targets: Sequence[str], scrape_interval: str) -> None:
    """One job scraping `targets` (host:port) at `/metrics`; rules evaluated as often."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "tidegate-test",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def run_prometheus(
    targets: Sequence[str],
    data_dir: Path,
    scrape_interval: str = "1s",
    port: int | None = None,
    ready_timeout: float = 30.0,
) -> AsyncIterator[str]:
    """Run Prometheus scraping `targets` until the block ends; yields its URL once it is ready.

    Config, TSDB and log (`prometheus.log`) live in `data_dir`, so a failing test can show them.
    """
    binary = find_prometheus()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "prometheus.yml"
    write_config(config, targets, scrape_interval)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir / "prometheus.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        await _wait_ready(url, process, log_path, ready_timeout)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_ready(
    url: str, process: asyncio.subprocess.Process, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(
                    f"prometheus exited with {process.returncode} before it was ready:\n{_tail(log)}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(_POLL)
    raise TimeoutError(f"prometheus at {url} was not ready after {timeout}s:\n{_tail(log)}")


async def wait_for_scrape(
    url: str, target: str, after: float | None = None, timeout: float = 15.0
) -> float:
    """Wait until Prometheus at `url` has scraped `target` successfully (`up` is 1).

    Prometheus 2.42 hands new targets to its scrapers only every 5s, so the first scrape comes
    about 5s after start-up; later ones follow the scrape interval.

    With `after` (a `time.time()`), wait for a scrape that started later than it: whatever the
    target exposed at `after` is then in the TSDB. Returns that scrape's timestamp.
    """
    up = f'up{{instance="{target}"}}'
    # timestamp() gives the sample's (scrape's) time only when applied to a bare selector.
    query = f"timestamp({up}) and {up} == 1"
    deadline = time.monotonic() + timeout
    last: object = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            async with session.get(f"{url}/api/v1/query", params={"query": query}) as response:
                last = await response.json()
            result = last["data"]["result"] if isinstance(last, dict) else []
            if result:
                scraped_at = float(result[0]["value"][1])
                if after is None or scraped_at > after:
                    return scraped_at
            await asyncio.sleep(_POLL)
    raise TimeoutError(f"{url} did not scrape {target} within {timeout}s (last answer: {last!r})")
