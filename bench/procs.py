"""CPU and memory of the processes in a benchmark (from /proc), and what machine it ran on."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM: the highest resident set size the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def children(pid: int | None = None) -> dict[int, str]:
    """Direct children of a process (default: this one), by pid, with their command name."""
    pid = os.getpid() if pid is None else pid
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == pid:
            found[int(entry.name)] = name
    return found


def find_child(name: str) -> int | None:
    """The pid of this process's child whose command name is `name` (e.g. temporal, prometheus)."""
    return next((pid for pid, comm in children().items() if comm == name), None)


@dataclass
class Usage:
    cpu_percent: float  # of one core, averaged over the window
    peak_rss: int  # bytes, highest sample in the window
    rss_end: int


@dataclass
class ProcessWatch:
    """Samples RSS every `period` seconds; `window()` gives CPU and peak RSS since `reset()`."""

    pids: Mapping[str, int]
    period: float = 0.5
    _cpu0: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0
    _peak: dict[str, int] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}
        self._peak = {}
        self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = rss_bytes(pid) or 0
            self._last[name] = rss
            self._peak[name] = max(self._peak.get(name, 0), rss)

    def window(self) -> dict[str, Usage]:
        self.sample()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        return {
            name: Usage(
                cpu_percent=100 * ((cpu_seconds(pid) or 0.0) - self._cpu0.get(name, 0.0)) / elapsed,
                peak_rss=self._peak.get(name, 0),
                rss_end=self._last.get(name, 0),
            )
            for name, pid in self.pids.items()
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProcessWatch]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.period)
                self.sample()

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _command_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    return out.strip().splitlines()[0] if out.strip() else "-"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "-"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    bin_dir = Path(sys.executable).parent
    return {
        "cpu": f"{os.cpu_count()} cores ({model})",
        "memory": memory,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "temporalio": _version("temporalio"),
        "temporal dev server": _command_version([str(bin_dir / "temporal"), "--version"]),
        "prometheus": _command_version(["prometheus", "--version"]),
        "kubernetes client": _version("kubernetes"),
        "prometheus-api-client": _version("prometheus-api-client"),
    }


def descendants(pid: int | None = None) -> set[int]:
    """A process (default: this one) and all its descendants."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


@dataclass
class LoadMeter:
    """How busy the machine was, and how much of that was not the benchmark's own processes.

    Call `poll()` now and then (`polling()` does): a process of the benchmark that ends between two
    polls has its last seconds counted as others'.
    """

    _busy0: float = 0.0
    _mine0: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()
        self._mine0 = {pid: cpu_seconds(pid) or 0.0 for pid in descendants()}
        self._last = dict(self._mine0)

    def poll(self) -> None:
        """Note the CPU of the benchmark's processes now (those that end before `stop` count too)."""
        for pid in descendants():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self._last[pid] = cpu

    def stop(self) -> dict[str, float]:
        self.poll()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        busy = machine_busy_seconds() - self._busy0
        mine = sum(cpu - self._mine0.get(pid, 0.0) for pid, cpu in self._last.items())
        cores = os.cpu_count() or 1
        return {
            "seconds": elapsed,
            "machine_busy_percent": 100 * busy / elapsed / cores,
            "bench_percent": 100 * mine / elapsed / cores,
            "others_percent": max(0.0, 100 * (busy - mine) / elapsed / cores),
        }


@contextlib.asynccontextmanager
async def polling(meter: LoadMeter, period: float = 2.0) -> AsyncIterator[LoadMeter]:
    """`meter` started, polled every `period` seconds, until the block ends (then stop() it)."""
    meter.start()

    async def loop() -> None:
        while True:
            await asyncio.sleep(period)
            await asyncio.to_thread(meter.poll)

    task = asyncio.create_task(loop())
    try:
        yield meter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
