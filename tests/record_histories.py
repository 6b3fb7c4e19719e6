"""Record the histories `tests/test_replay.py` replays: real runs of every strategy on the sandbox.

    python -m tests.record_histories [--out tests/histories] [--suffix COMMIT]

Starts the Temporal dev server, the sandbox (emulated cluster, simulated traffic, a real
Prometheus) and a worker process, runs short deployments of every strategy to each outcome in
`recordings()`, checks that each ended as intended, and writes its history as JSON to
`<out>/<strategy>-<case>[-<suffix>].json`. Run it from a clean checkout of a commit, so that the
histories are those of the committed workflow code (tests/histories/README.md says how).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentResult, DeploymentStatus, Outcome, Phase
from sandbox.stack import run_sandbox
from tests.conftest import BIN, eventually
from tests.test_e2e_sandbox import ROOT, Stack, canary
from tests.test_e2e_strategies import ab_test, health, in_place
from workflows import TASK_QUEUE
from workflows.common import SEARCH_ATTRIBUTES

TIMEOUT = 120  # seconds a recorded run may take
Steer = Callable[[WorkflowHandle[Any, DeploymentResult]], Awaitable[None]]


@dataclass(frozen=True)
class Recording:
    """One run to record: `name` is the file's (`<strategy>-<case>`), `steer` sends its signals."""

    name: str
    document: dict[str, Any]
    outcome: Outcome
    steer: Steer | None = None


class RecordingFailed(RuntimeError):
    """A run did not end as its recording says: its history would be mislabelled."""


def at_phase(phase: Phase, signal: str, by: str, reason: str, weight: int | None = None) -> Steer:
    """Send `signal` once the run has reached `phase` (and canary `weight`, if given)."""

    async def steer(handle: WorkflowHandle[Any, DeploymentResult]) -> None:
        async def reached() -> bool:
            status = await handle.query("status", result_type=DeploymentStatus)
            return status.phase == phase and (weight is None or status.weight == weight)

        await eventually(reached, what=f"{handle.id} to reach {phase.value}", timeout=TIMEOUT)
        await handle.signal(signal, Decision(by=by, reason=reason))

    return steer


def in_turn(*steers: Steer) -> Steer:
    async def steer(handle: WorkflowHandle[Any, DeploymentResult]) -> None:
        for each in steers:
            await each(handle)

    return steer


def with_image(document: dict[str, Any], image: str) -> dict[str, Any]:
    return {**document, "image": image}


def blue_green(stack: Stack, image: str, **settings: Any) -> dict[str, Any]:
    return {
        "app": "pay",
        "image": image,
        "replicas": 2,
        "strategy": {
            "type": "blueGreen",
            "blueGreen": {
                "previewService": "pay-preview",
                "smokeTest": {"url": health(stack), "retries": 1, "interval": "1s"},
                "approval": {},
                "scaleDownDelay": "1s",
                "progressDeadline": "30s",
                **settings,
            },
        },
    }


def recordings(stack: Stack) -> list[Recording]:
    """Every recorded run, in the order they run (first deployments before updates)."""
    sandbox = stack.sandbox
    approve = at_phase(Phase.AWAITING_APPROVAL, "approve", "release-manager", "checked the preview")
    canary_promoted = [
        {"setWeight": 50},
        {"pause": {"duration": "4s"}},
        {"analysis": {"checks": ["error-rate"]}},
        {"setWeight": 100},
        {"pause": {"duration": "2s"}},
    ]
    canary_held = [{"setWeight": 30}, {"pause": {"duration": "60s"}}, {"setWeight": 100}]
    ab_test_short = ab_test(stack, "abapp:1.0")
    ab_test_short["strategy"]["abTest"]["duration"] = "6s"
    rolling = in_place(stack, "rolling", "roll", "roll:1.0", maxSurge=1, maxUnavailable=0, analysisWindow="3s")
    rolling["analysis"] = canary("roll", "roll:1.0", [], sandbox)["analysis"]  # measured for `analysisWindow`
    recreate = in_place(stack, "recreate", "rec", "rec:1.0")
    return [
        Recording("blueGreen-first-deployment", blue_green(stack, "pay:1.0"), Outcome.PROMOTED, approve),
        Recording("blueGreen-promoted", blue_green(stack, "pay:2.0"), Outcome.PROMOTED, approve),
        Recording("blueGreen-rolled-back", blue_green(stack, "pay:3.0-unhealthy"), Outcome.ROLLED_BACK),
        Recording(
            "blueGreen-rolled-back-by-signal",
            blue_green(stack, "pay:3.0", scaleDownDelay="60s"),
            Outcome.ROLLED_BACK,
            in_turn(approve, at_phase(Phase.KEEPING_PREVIOUS, "rollback", "on-call", "errors after the switch")),
        ),
        Recording("canary-first-deployment", canary("shop", "shop:1.0", canary_promoted, sandbox), Outcome.PROMOTED),
        Recording("canary-promoted", canary("shop", "shop:2.0", canary_promoted, sandbox), Outcome.PROMOTED),
        Recording(
            "canary-aborted",
            canary("shop", "shop:3.0", canary_held, sandbox),
            Outcome.ABORTED,
            at_phase(Phase.OBSERVING, "abort", "release-manager", "wrong build", weight=30),
        ),
        # after the abort: its measurements of v2 would otherwise count the bad version's errors
        Recording("canary-rolled-back", canary("shop", "shop:3.0-bad", canary_held, sandbox), Outcome.ROLLED_BACK),
        Recording("abTest-first-deployment", ab_test_short, Outcome.PROMOTED),
        Recording("abTest-promoted", with_image(ab_test_short, "abapp:2.0"), Outcome.PROMOTED),
        Recording("abTest-rolled-back", with_image(ab_test_short, "abapp:3.0-bad"), Outcome.ROLLED_BACK),
        Recording("rolling-first-deployment", rolling, Outcome.PROMOTED),
        Recording("rolling-promoted", with_image(rolling, "roll:2.0"), Outcome.PROMOTED),
        Recording("rolling-undone", with_image(rolling, "roll:3.0-crash"), Outcome.ROLLED_BACK),
        Recording("recreate-first-deployment", recreate, Outcome.PROMOTED),
        Recording("recreate-promoted", with_image(recreate, "rec:2.0"), Outcome.PROMOTED),
        Recording("recreate-rolled-back", with_image(recreate, "rec:3.0-crash"), Outcome.ROLLED_BACK),
    ]


def machine_paths() -> list[tuple[str, str]]:
    """Where this checkout, its virtualenv and Python live, and what stands for them in a history."""
    found = [(str(ROOT), "tidegate"), (sys.prefix, "venv"), (sys.base_prefix, "python")]
    return sorted(found, key=lambda pair: len(pair[0]), reverse=True)


def scrub(history_json: str) -> str:
    """The history without this machine's paths (in the stack traces of failed activities).

    Stack traces are informational: replay never reads them.
    """
    for path, neutral in machine_paths():
        history_json = history_json.replace(path, neutral)
    return history_json


async def record(stack: Stack, recording: Recording, out: Path, suffix: str) -> DeploymentResult:
    handle = await stack.deploy(recording.document)
    steering = asyncio.ensure_future(recording.steer(handle)) if recording.steer else None
    try:
        result = await asyncio.wait_for(handle.result(), timeout=TIMEOUT)
        if steering is not None:
            await steering
    finally:
        if steering is not None and not steering.done():
            steering.cancel()
    if result.outcome != recording.outcome:
        raise RecordingFailed(
            f"{recording.name}: expected {recording.outcome.value}, the run ended {result.outcome.value}: {result.reason}"
        )
    run = stack.env.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    history = await run.fetch_history()
    text = json.dumps(json.loads(scrub(history.to_json())), indent=1) + "\n"
    (out / f"{recording.name}{suffix}.json").write_text(text, encoding="utf-8")
    return result


async def record_all(out: Path, suffix: str = "") -> None:
    """Record every run of `recordings()` into `out`; `suffix` ("-abc1234") ends each file's name."""
    out.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
    )
    try:
        workdir = Path(tempfile.mkdtemp(prefix="tidegate-histories-"))
        async with run_sandbox(workdir, rollout_seconds=0.5, rate=40.0) as sandbox:
            stack = Stack(env, sandbox, TASK_QUEUE, None)  # type: ignore[arg-type]
            stack.start_worker()
            try:
                for recording in recordings(stack):
                    began = time.monotonic()
                    try:
                        result = await record(stack, recording, out, suffix)
                    except BaseException:
                        print(f"{recording.name} failed; the worker's log and Prometheus' data are in {workdir}")
                        raise
                    print(f"{recording.name}: {result.outcome.value} in {time.monotonic() - began:.1f}s: {result.reason}")
            finally:
                stack.stop_worker()
        shutil.rmtree(workdir)
    finally:
        await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "histories")
    parser.add_argument("--suffix", default="", help="appended to each file name (e.g. the commit), so "
                        "new recordings go beside the old ones instead of replacing them")
    args = parser.parse_args()
    asyncio.run(record_all(args.out, f"-{args.suffix}" if args.suffix else ""))


if __name__ == "__main__":
    main()
