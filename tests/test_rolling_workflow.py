"""Rolling update on the time-skipping test server: the undo, abort mid-rollout, timers, approval."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentResult, Outcome, Phase, parse_spec
from tests.conftest import start_run, until_phase, worker_for_test
from tests.fakes import FakeCluster
from workflows.rolling import RollingWorkflow

UNDONE = "restore myapp myapp:1.0 replicas=4"
# heartbeats at once, so that a cancelled wait (an abort) learns of it at once
CANCEL_AT_ONCE = timedelta(milliseconds=50)


def spec(analysis: dict[str, Any] | None = None, **rolling: Any) -> Any:
    document: dict[str, Any] = {
        "app": "myapp",
        "image": "myapp:2.0",
        "strategy": {
            "type": "rolling",
            "rolling": {"smokeTest": {"url": "http://{service}.{namespace}/health"}, "maxSurge": 1, **rolling},
        },
    }
    if analysis is not None:
        document["analysis"] = {"prometheus": {"url": "http://prometheus:9090"}, "interval": "30s", **analysis}
    return parse_spec(document)


@pytest.fixture
async def cluster(time_skipping_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FakeCluster]:
    fake = FakeCluster(deployments={"myapp": "myapp:1.0"}, replicas={"myapp": 4})
    async with worker_for_test(
        time_skipping_env,
        task_queue,
        [RollingWorkflow],
        fake.activities(),
        max_heartbeat_throttle_interval=CANCEL_AT_ONCE,
    ):
        yield fake


async def start(env: WorkflowEnvironment, task_queue: str, deployment_spec: Any = None) -> WorkflowHandle[Any, DeploymentResult]:
    return await start_run(env, task_queue, RollingWorkflow, deployment_spec or spec())


async def test_rolling_update_succeeds(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.PROMOTED and "Deployment myapp runs myapp:2.0" in result.reason
    assert cluster.actions == [
        "update myapp image=myapp:2.0 replicas=None",
        "ready myapp",
        "smoke http://myapp.default/health",
    ]
    assert cluster.deployments["myapp"] == "myapp:2.0" and cluster.replicas["myapp"] == 4  # replicas kept
    assert cluster.strategies["myapp"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}}
    assert (result.previous_image, result.active_version) == ("myapp:1.0", "myapp:2.0")


async def test_what_the_spec_leaves_unset_is_the_deployments_own(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    own = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}}
    cluster.strategies["myapp"] = own
    result = await (await start(time_skipping_env, task_queue, spec(maxSurge=None))).result()
    assert result.outcome == Outcome.PROMOTED and cluster.strategies["myapp"] == own  # not overwritten with 25%
    assert any("maxSurge 50%, maxUnavailable 0" in e.message for e in result.events)

    result = await (await start(time_skipping_env, task_queue, spec(maxSurge=2))).result()
    assert cluster.strategies["myapp"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}


async def test_pods_never_ready_restore_the_template_and_wait_for_it(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.never_ready.add("myapp:2.0")
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK and "progress deadline" in result.reason
    assert cluster.actions == [
        "update myapp image=myapp:2.0 replicas=None",
        "rollout failed myapp",
        UNDONE,
        "ready myapp",  # the run waited until the rollback itself was complete
    ]
    assert cluster.deployments["myapp"] == "myapp:1.0" and cluster.strategies["myapp"] is None
    assert "rolledBack" in [e.kind for e in result.events]


async def test_failed_smoke_test_undoes_the_rollout(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.smoke_status = 503
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK and "answered 503" in result.reason
    assert cluster.actions[-2:] == [UNDONE, "ready myapp"]


async def test_analysis_window_is_measured_and_a_breach_undoes(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    # healthy: measured every 30 s for the whole 5-minute window (a durable timer)
    handle = await start(time_skipping_env, task_queue, spec(analysis={}, analysisWindow="5m"))
    await until_phase(handle, Phase.ANALYSING)
    status = await handle.query(RollingWorkflow.status)
    assert status.timer_ends_at is not None
    result = await handle.result()
    assert result.outcome == Outcome.PROMOTED and len(cluster.measurements) == 10
    assert 'version="v1"' in (await handle.query(RollingWorkflow.status)).last_measurement.checks[0].query

    # the new version's error rate breaches 2 minutes in: undone at the next measurement
    cluster.deployments["myapp"] = "myapp:1.0"
    cluster.measurements.clear()
    cluster.metrics = lambda name, weight, at: 0.05 if len(cluster.measurements) >= 4 and "error" in name else 0.001
    result = await (await start(time_skipping_env, task_queue, spec(analysis={}, analysisWindow="5m"))).result()
    assert result.outcome == Outcome.ROLLED_BACK and "error-rate = 0.05, above 0.01" in result.reason
    assert len(cluster.measurements) == 4 and cluster.deployments["myapp"] == "myapp:1.0"


async def test_abort_during_the_rollout_undoes_it(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.hanging.add("myapp:2.0")  # pods that take forever
    handle = await start(time_skipping_env, task_queue)
    await until_phase(handle, Phase.ROLLING_OUT)
    await handle.signal(RollingWorkflow.abort, Decision(by="bob", reason="wrong build"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED and result.by == "bob" and "wrong build" in result.reason
    assert cluster.actions == ["update myapp image=myapp:2.0 replicas=None", UNDONE, "ready myapp"]
    assert cluster.deployments["myapp"] == "myapp:1.0"
    assert cluster.hung == 0  # the cancelled wait has stopped: no poller outlives the run


async def test_pause_waits_for_approval_and_abort_there_undoes(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, spec(pause={}))
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    await time_skipping_env.sleep(timedelta(minutes=30))  # a durable wait: nothing happens meanwhile
    assert (await handle.query(RollingWorkflow.status)).phase == Phase.AWAITING_APPROVAL
    await handle.signal(RollingWorkflow.approve, Decision(by="alice", reason="looks good"))
    result = await handle.result()
    assert result.outcome == Outcome.PROMOTED
    assert any(e.kind == "approved" and e.by == "alice" for e in result.events)

    cluster.deployments["myapp"] = "myapp:1.0"
    handle = await start(time_skipping_env, task_queue, spec(pause={}))
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    await handle.signal(RollingWorkflow.abort, Decision(by="carol"))
    result = await handle.result()
    assert result.outcome == Outcome.ABORTED and cluster.actions[-2:] == [UNDONE, "ready myapp"]


async def test_first_deployment_creates_the_deployment(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.deployments.clear()
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.PROMOTED
    assert cluster.actions[:2] == ["apply myapp myapp:2.0", "ready myapp"]
    assert cluster.replicas["myapp"] == 3  # spec.replicas for a Deployment tidegate creates

    # a first deployment that fails is deleted again: users had nothing
    cluster.deployments.clear()
    cluster.never_ready.add("myapp:2.0")
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.ROLLED_BACK and "myapp" not in cluster.deployments
    assert cluster.actions[-1] == "delete myapp"


async def test_someone_elses_edit_is_never_overwritten(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.edited_by_others.add("myapp")
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.FAILED
    assert "someone else changed it" in result.reason and "left as it is" in result.reason
    assert cluster.deployments["myapp"] == "myapp:1.0" and not any(a.startswith("restore") for a in cluster.actions)
