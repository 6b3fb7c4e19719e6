"""`make bench`: run every benchmark on the sandbox stack and write docs/benchmarks.md and its plot.

    python -m bench.run                 # the default sizes: about 11 minutes on 2 cores
    python -m bench.run --full          # the carry benchmark goes on (2,000, 3,000, 5,000, ...) until it breaks
    python -m bench.run --only breach   # some of: overhead, breach, cost, carry (the page has those sections)

Two stacks, one after the other: the first (scrape every 1 s) runs the overhead benchmark alone,
then the breach and cost benchmarks side by side; the second (a fresh dev server, a sandbox tuned
for a thousand apps) the carry benchmark. Raw figures go
to `<workdir>/results.json` beside the page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.breach import BreachConfig, run_breach
from bench.carry import CARRY_SETTINGS, CarryConfig, run_carry
from bench.cost import run_cost
from bench.overhead import run_overhead
from bench.plot import plot_breach
from bench.procs import LoadMeter, machine, polling
from bench.report import Results, as_dict, write
from bench.stack import ROOT, StackSettings, bench_stack

PARTS = ("overhead", "breach", "cost", "carry")
FULL_SIZES = (100, 300, 1000, 2000, 3000, 5000, 8000, 12000)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def main(args: argparse.Namespace) -> int:
    parts = tuple(args.only.split(",")) if args.only else PARTS
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s): {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    command = args.command or "python -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = Results(machine=machine(), command=command.strip(), started=datetime.now(timezone.utc))
    began = time.monotonic()

    if {"overhead", "breach", "cost"} & set(parts):
        say("stack 1: Temporal dev server, sandbox (scrape 1 s), Prometheus, worker")
        meter = LoadMeter()
        async with bench_stack(workdir / "stack1", StackSettings()) as stack, polling(meter):
            if "overhead" in parts:
                t = time.monotonic()
                results.overhead = await run_overhead(stack, runs=args.overhead_runs, say=say)
                results.phases["overhead"] = time.monotonic() - t
            # The breach runs mostly wait out their windows; the cost runs (counted per app) go on beside them.
            async def breach() -> None:
                t = time.monotonic()
                config = BreachConfig(runs=args.breach_runs, window=args.window)
                results.breach = await run_breach(stack, config, say=say)
                results.phases["breach"] = time.monotonic() - t
                results.plot = plot_breach(results.breach, Path(args.out).parent / "benchmark-canary.png")

            async def cost() -> None:
                t = time.monotonic()
                results.cost = await run_cost(stack, say=say)
                results.phases["cost"] = time.monotonic() - t

            await asyncio.gather(*([breach()] if "breach" in parts else []), *([cost()] if "cost" in parts else []))
            results.load["stack 1"] = meter.stop()

    if "carry" in parts:
        say("stack 2: a fresh dev server, sandbox for many apps (scrape 5 s), Prometheus, worker")
        meter = LoadMeter()
        async with bench_stack(workdir / "stack2", CARRY_SETTINGS) as stack, polling(meter):
            t = time.monotonic()
            sizes = FULL_SIZES if args.full else tuple(int(x) for x in args.sizes.split(","))
            results.carry = await run_carry(stack, CarryConfig(sizes=sizes, window=args.carry_window), say=say)
            results.phases["carry"] = time.monotonic() - t
            results.load["stack 2"] = meter.stop()

    results.wall_seconds = time.monotonic() - began
    page = write(results, Path(args.out))
    (workdir / "results.json").write_text(json.dumps(as_dict(results), indent=1, default=str), encoding="utf-8")
    say(f"wrote {page}" + (f" and {results.plot}" if results.plot else "") + f" in {results.wall_seconds / 60:.1f} min")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    parser.add_argument(
        "--full", action="store_true", help=f"carry: sizes {', '.join(map(str, FULL_SIZES))} until something breaks"
    )
    parser.add_argument("--sizes", default="100,300,1000", help="carry: deployments in flight per stage (default 100,300,1000)")
    parser.add_argument("--carry-window", type=float, default=75.0, help="carry: steady seconds watched per stage (default 75)")
    parser.add_argument("--breach-runs", type=int, default=12, help="breach: runs per configuration (default 12)")
    parser.add_argument(
        "--window", type=float, default=60.0, help="breach: seconds each weight is held, both algorithms (default 60)"
    )
    parser.add_argument("--overhead-runs", type=int, default=6, help="overhead: zero-pause canaries (default 6)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="the page to write (the plot goes beside it)")
    parser.add_argument("--workdir", default=str(ROOT / ".bench"), help="stacks' files and results.json (emptied first)")
    parser.add_argument("--command", default=os.environ.get("BENCH_COMMAND"), help="the command to name on the page")
    return parser.parse_args(argv)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)
    try:
        code = asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    os._exit(code)  # the dev server's and Prometheus' pipes must not keep the interpreter waiting
