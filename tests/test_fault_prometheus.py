"""End to end on the sandbox stack: the real Prometheus goes down in the middle of a canary's pause.

An analysis that cannot measure must not promote: after `consecutiveErrorLimit` errors in a row
(and one more, as Argo Rollouts counts) the run rolls back and says which check could not reach
which Prometheus.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from deploy_models import DeploymentStatus, Outcome, Phase, Verdict
from sandbox.cluster import DEPLOYMENTS
from tests.conftest import eventually
from tests.test_e2e_sandbox import Stack, canary, stack, weights  # noqa: F401 (the fixture)

ERROR_LIMIT = 2


def child_listening_at(url: str) -> int:
    """The pid of this process' child serving `url`: the stack keeps no handle on its Prometheus."""
    listen = f"--web.listen-address={url.removeprefix('http://')}".encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().split(b"\0")
            parent = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if listen in arguments and parent == os.getpid():
            return int(cmdline.parent.name)
    raise AssertionError(f"no child process of this one serves {url}")


async def test_prometheus_down_mid_pause_rolls_back_at_the_error_limit(stack: Stack) -> None:
    steps = [{"setWeight": 25}, {"pause": {"duration": "120s"}}, {"setWeight": 100}]
    document = canary("till", "till:2.0", steps, stack.sandbox)
    document["analysis"] |= {"consecutiveErrorLimit": ERROR_LIMIT, "inconclusiveLimit": 30}
    prometheus_url = stack.sandbox.prometheus_url
    assert prometheus_url is not None
    assert (await (await stack.deploy(document, image="till:1.0")).result()).outcome == Outcome.PROMOTED
    handle = await stack.deploy(document)

    async def measured_in_the_pause() -> bool:
        status = await handle.query("status", result_type=DeploymentStatus)
        last = status.last_measurement
        return status.phase == Phase.OBSERVING and status.weight == 25 and last is not None and last.verdict == Verdict.PASS

    await eventually(measured_in_the_pause, what="a passing measurement in the pause at 25%", timeout=90)
    os.kill(child_listening_at(prometheus_url), signal.SIGKILL)
    killed_at = datetime.now(timezone.utc)
    killed = time.monotonic()
    result = await asyncio.wait_for(handle.result(), timeout=90)
    took = time.monotonic() - killed

    assert result.outcome == Outcome.ROLLED_BACK, result.reason
    assert f"could not measure {ERROR_LIMIT + 1} times in a row (limit {ERROR_LIMIT})" in result.reason
    assert f"error-rate@v2: {prometheus_url} unreachable: " in result.reason
    errors = [e for e in result.events if e.kind == "analysis" and e.message.startswith("error:")]
    assert len(errors) == ERROR_LIMIT + 1 and all(e.at >= killed_at for e in errors)
    failed = result.failed_measurement
    assert failed is not None and {c.verdict for c in failed.checks} == {Verdict.ERROR}
    # never promoted: the canary never got more than its first step, the stable kept the old image
    assert [e.message.split(",")[0] for e in result.events if e.kind == "weight"] == ["v2 25%", "v2 0%"]
    assert not any(e.kind == "phase" and e.message.startswith(f"{Phase.PROMOTED.value}:") for e in result.events)
    assert weights(stack, "till") == [100, 0]
    assert stack.get(DEPLOYMENTS, "till-canary")["spec"]["replicas"] == 0
    assert stack.get(DEPLOYMENTS, "till-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == "till:1.0"
    # three 1 s intervals, each measurement refused at once, then the rollback's few API calls
    assert took < 30, f"rolled back {took:.1f}s after Prometheus went down"
