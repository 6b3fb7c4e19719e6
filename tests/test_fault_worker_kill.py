"""A worker SIGKILLed while a Kubernetes write is in flight, on the sandbox stack (the worker a
process of its own, as in production).

The hard case: the write reaches the API server and is applied, but the worker dies before it
can report it. Temporal retries the activity on another worker once the attempt's start-to-close
timeout (30 s, the production value) has passed; the retry must find the change already made and
write nothing, and the run must go on as if nothing had happened. Takes about 40 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from temporalio.api.enums.v1 import TimeoutType

from deploy_models import Outcome
from sandbox.cluster import DEPLOYMENTS, VIRTUALSERVICES
from tests.conftest import eventually
from tests.history import activity_runs
from tests.test_e2e_sandbox import Stack, canary, stack, weights  # noqa: F401 (stack: the fixture)
from workflows.common import KUBERNETES_CALL

KUBERNETES_WRITES = {"apply_deployment", "set_canary_weight", "scale_deployment"}


async def test_worker_killed_during_weight_patch_retries_without_writing_again(stack: Stack) -> None:
    app = "lamp"
    steps = [{"setWeight": 30}, {"pause": {"duration": "2s"}}, {"setWeight": 100}]
    document = canary(app, f"{app}:2.0", steps, stack.sandbox)
    assert (await (await stack.deploy(document, image=f"{app}:1.0")).result()).outcome == Outcome.PROMOTED
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
    versions = [version for version in cluster.objects[VIRTUALSERVICES, "default", app].history if version is not None]
    assert [canary_weight(version["spec"]["http"][0]["route"]) for version in versions] == [0, 30, 100, 0]
    patches = [request for request in cluster if request.method == "PATCH" and request.url.path == path]
    assert [canary_weight(request.data[1]["value"]) for request in patches] == [30, 100, 0]

    # The record: the 30% write ended on its second attempt, after the first timed out.
    runs = await activity_runs(handle)
    writes = [run for run in runs if run.name in KUBERNETES_WRITES]
    assert all(run.completed for run in writes)
    # (set_canary_weight also serves checks that the weight is unchanged; the moves are these)
    weight_moves = [run for run in writes if run.name == "set_canary_weight" and run.summary.startswith("canary weight")]
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


def canary_weight(route: list[dict[str, Any]]) -> int:
    """The canary subset's weight in a VirtualService route."""
    return next(destination["weight"] for destination in route if destination["destination"]["subset"] == "v2")
