"""`python -m sandbox`: the emulated cluster, simulated traffic and Prometheus, until Ctrl-C.

Point the worker at the printed kubeconfig and the specs' Prometheus at the printed URL; the
simulated apps answer according to the rules (`--rules FILE` before the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

from sandbox.prometheus import PrometheusNotInstalled, find_prometheus
from sandbox.rules import RulesError
from sandbox.stack import run_sandbox

INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-prometheus.sh"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".sandbox"), help="kubeconfig and Prometheus data (default: .sandbox)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--kube-port", type=int, default=8001, help="Kubernetes API port (default: 8001)")
    parser.add_argument("--metrics-port", type=int, default=9101, help="/metrics port (default: 9101)")
    parser.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus port (default: 9090)")
    parser.add_argument("--no-prometheus", action="store_true", help="serve /metrics only, without Prometheus")
    parser.add_argument("--rules", type=Path, metavar="FILE", help="rules consulted before the defaults")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per app (default: 20)")
    parser.add_argument("--scrape-interval", default="1s", help="Prometheus scrape interval (default: 1s)")
    parser.add_argument("--rollout-seconds", type=float, default=2.0, help="time for new pods to get ready (default: 2)")
    return parser.parse_args(argv)


def ensure_prometheus() -> str | None:
    """None when the binary is there (installed now if we are root), else what to do about it."""
    try:
        find_prometheus()
        return None
    except PrometheusNotInstalled as missing:
        if os.geteuid() != 0 or not INSTALL_SCRIPT.exists():
            return f"{missing}\n(or run without it: python -m sandbox --no-prometheus)"
    print(f"prometheus is missing; installing it with {INSTALL_SCRIPT.name} ...", file=sys.stderr, flush=True)
    done = subprocess.run([str(INSTALL_SCRIPT)], check=False)
    try:
        find_prometheus()
        return None
    except PrometheusNotInstalled as missing:
        return f"{INSTALL_SCRIPT.name} exited with {done.returncode}: {missing}"


def _shown(path: Path) -> str:
    """A path relative to the current directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with run_sandbox(
        args.workdir,
        host=args.host,
        kube_port=args.kube_port,
        metrics_port=args.metrics_port,
        prometheus_port=None if args.no_prometheus else args.prometheus_port,
        rules_file=args.rules,
        rate=args.rate,
        scrape_interval=args.scrape_interval,
        rollout_seconds=args.rollout_seconds,
    ) as sandbox:
        kubeconfig = _shown(sandbox.kubeconfig)
        print(f"Kubernetes API: {sandbox.kube_url}")
        print(f"kubeconfig:     {kubeconfig}")
        print(f"metrics:        {sandbox.metrics_url}")
        print(f"Prometheus:     {sandbox.prometheus_url or '(not started)'}")
        print()
        print(f"export KUBECONFIG={kubeconfig}")
        print("Ctrl-C stops everything.", flush=True)
        await stop.wait()
    print("sandbox stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_prometheus and (problem := ensure_prometheus()) is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args))
    except RulesError as error:
        print(f"bad rules file: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a port already taken, an unwritable workdir
        hint = " (another sandbox running? choose ports with --kube-port/--metrics-port/--prometheus-port)"
        print(f"cannot start the sandbox: {error}{hint if error.errno == errno.EADDRINUSE else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
