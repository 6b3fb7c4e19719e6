"""A worker SIGKILLed while a Kubernetes write is in flight, or while it polls a rollout, on the
sandbox stack (the worker a process of its own, as in production).

The hard case: the write reaches the API server and is applied, but the worker dies before it
can report it. Temporal retries the activity on another worker once the attempt's start-to-close
timeout (30 s, the production value) has passed; the retry must find the change already made and
write nothing, and the run must go on as if nothing had happened. Takes about 40 s.

A rollout poll heartbeats: its loss is noticed at the heartbeat timeout (10 s), not at its
start-to-close (the progress deadline plus a minute). Takes about 20 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import TimeoutType
from temporalio.api.workflow.v1 import PendingActivityInfo

from deploy_models import Outcome
from sandbox.cluster import DEPLOYMENTS
from tests.conftest import eventually
from tests.history import activity_runs
from tests.test_e2e_sandbox import Stack, canary, is_write, stack, weight_writes, weights  # noqa: F401 (stack: the fixture)
from tests.test_fault_kubernetes import attempt_running
from workflows.common import KUBERNETES_CALL, ROLLOUT_HEARTBEAT


async def test_worker_killed_during_weight_patch_retries_without_writing_again(stack: Stack) -> None:
    app = "lamp"
    document = await canary_over_first_version(stack, app, weight=30)
    cluster = stack.sandbox.cluster
    path = f"/apis/networking.istio.io/v1/namespaces/default/virtualservices/{app}"

    with cluster.hold("PATCH", path) as gate:
        handle = await stack.deploy(document)
        await asyncio.wait_for(gate.arrived.wait(), timeout=60)
        stack.stop_worker(signal.SIGKILL)
        killed = time.monotonic()
        assert weights(stack, app) == [100, 0]  # held: not written yet
    # released: the dead worker's PATCH is applied, and nobody reports it to Temporal

    async def applied() -> bool:
        return weights(stack, app) == [70, 30]

    await eventually(applied, what="the held weight patch to be applied")
    stack.start_worker()
    result = await asyncio.wait_for(handle.result(), timeout=180)
    finished = time.monotonic() - killed

    assert result.outcome == Outcome.PROMOTED, result.reason
    assert stack.get(DEPLOYMENTS, f"{app}-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == f"{app}:2.0"
    assert stack.get(DEPLOYMENTS, f"{app}-canary")["spec"]["replicas"] == 0
    assert weights(stack, app) == [100, 0]
    moves = [e.message.split(",")[0] for e in result.events if e.kind == "weight"]
    assert moves == ["v2 30%", "v2 100%", "v2 0%"]

    # The cluster saw each weight once: the retry read 30% back and wrote nothing.
    assert weight_writes(stack, app) == ([0, 30, 100, 0], [30, 100, 0])

    # The record: the 30% write ended on its second attempt, after the first timed out.
    runs = await activity_runs(handle)
    writes = [run for run in runs if is_write(run)]
    assert all(run.completed for run in writes)
    weight_moves = [run for run in writes if run.name == "set_canary_weight"]
    assert [run.summary for run in weight_moves] == ["canary weight 30%", "canary weight 100%", "canary weight 0%"]
    retried = weight_moves[0]
    assert retried.attempt == 2
    assert retried.retried_after_timeout == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE
    assert all(run.attempt == 1 for run in writes if run is not retried)
    # exactly one promotion: the stable Deployment got the new image once
    assert [run.summary for run in writes if run.name == "apply_deployment"] == [
        f"apply {app}-canary ({app}:2.0)",
        f"apply {app}-stable ({app}:2.0)",
    ]
    # the retry came one start-to-close timeout after the kill, not much later
    assert finished < KUBERNETES_CALL["start_to_close_timeout"].total_seconds() + 60


async def test_worker_killed_during_rollout_poll_is_retried_at_its_heartbeat_timeout(stack: Stack) -> None:
    app = "kite"
    document = await canary_over_first_version(stack, app, weight=50)
    cluster = stack.sandbox.cluster
    usual_rollout = cluster.rollout_seconds
    # The canary's pods take longer than the kill and the retry together: the retry finds the
    # rollout still in progress and polls on. (Under the 30 s progress deadline, which the retry
    # must also beat.)
    cluster.rollout_seconds = 25.0
    try:
        handle = await stack.deploy(document)

        async def polling() -> PendingActivityInfo | None:
            poll = await pending(handle, "wait_for_rollout")
            return poll if poll is not None and poll.HasField("last_heartbeat_time") else None

        first = await eventually(polling, what=f"the rollout poll of {app}-canary to heartbeat", timeout=60)
        assert first.attempt == 1
        stack.stop_worker(signal.SIGKILL)
        killed = datetime.now(UTC)
        stack.start_worker()

        async def retried() -> PendingActivityInfo | None:
            poll = await pending(handle, "wait_for_rollout")
            return poll if poll is not None and poll.attempt == 2 and attempt_running(poll) else None

        retry = await eventually(retried, what="the rollout poll's retry", timeout=90)
        assert stack.get(DEPLOYMENTS, f"{app}-canary")["status"].get("readyReplicas", 0) < 2  # still rolling out
    finally:
        cluster.rollout_seconds = usual_rollout
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.outcome == Outcome.PROMOTED, result.reason
    assert stack.get(DEPLOYMENTS, f"{app}-stable")["spec"]["template"]["spec"]["containers"][0]["image"] == f"{app}:2.0"
    assert stack.get(DEPLOYMENTS, f"{app}-canary")["spec"]["replicas"] == 0
    assert weights(stack, app) == [100, 0]
    rollouts = [e.message.split(":")[0] for e in result.events if e.kind == "rollout"]
    assert rollouts == [f"{app}-canary ready", f"{app}-stable ready"]

    # The record: the canary's poll ended on its second attempt, after the first one's heartbeat
    # timed out; nothing else ran twice.
    runs = await activity_runs(handle)
    polls = [run for run in runs if run.name == "wait_for_rollout"]
    assert [run.summary.split(" to ")[0] for run in polls] == [f"wait for {app}-canary", f"wait for {app}-stable"]
    assert all(run.completed for run in polls)
    assert polls[0].attempt == 2
    assert polls[0].retried_after_timeout == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    assert all(run.attempt == 1 for run in runs if is_write(run))
    assert polls[1].attempt == 1
    # the retry came at the heartbeat timeout (plus a second's back-off and the new worker's
    # start), far sooner than the attempt's start-to-close
    gap = retry.last_started_time.ToDatetime(UTC) - killed
    assert ROLLOUT_HEARTBEAT - timedelta(seconds=2) < gap < timedelta(seconds=30), gap


async def pending(handle: Any, activity: str) -> PendingActivityInfo | None:
    """The run's pending activity of that name, as the server reports it now."""
    description = await handle.describe()
    return next(
        (info for info in description.raw_description.pending_activities if info.activity_type.name == activity), None
    )


async def canary_over_first_version(stack: Stack, app: str, weight: int) -> dict[str, Any]:
    """A canary of `{app}:2.0` (`weight`%, a short pause, 100%), `{app}:1.0` deployed before it."""
    steps = [{"setWeight": weight}, {"pause": {"duration": "2s"}}, {"setWeight": 100}]
    document = canary(app, f"{app}:2.0", steps, stack.sandbox)
    assert (await (await stack.deploy(document, image=f"{app}:1.0")).result()).outcome == Outcome.PROMOTED
    return document
