"""Recreate on the time-skipping test server: the downtime, the old version back, abort, approval."""

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
from workflows.recreate import RecreateWorkflow

FORWARD = [
    "update myapp image=None replicas=0",
    "gone myapp",
    "update myapp image=myapp:2.0 replicas=4",
]
OLD_BACK = "restore myapp myapp:1.0 replicas=4"


def spec(**recreate: Any) -> Any:
    return parse_spec(
        {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {
                "type": "recreate",
                "recreate": {"smokeTest": {"url": "http://{service}.{namespace}/health"}, **recreate},
            },
        }
    )


@pytest.fixture
async def cluster(time_skipping_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FakeCluster]:
    fake = FakeCluster(deployments={"myapp": "myapp:1.0"}, replicas={"myapp": 4})
    async with worker_for_test(
        time_skipping_env,
        task_queue,
        [RecreateWorkflow],
        fake.activities(),
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),  # a cancelled wait learns of it at once
    ):
        yield fake


async def start(env: WorkflowEnvironment, task_queue: str, deployment_spec: Any = None) -> WorkflowHandle[Any, DeploymentResult]:
    return await start_run(env, task_queue, RecreateWorkflow, deployment_spec or spec())


async def test_recreate_reports_the_downtime(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    handle = await start(time_skipping_env, task_queue)
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    assert cluster.actions == [
        *FORWARD,
        "first ready myapp myapp:2.0",
        "ready myapp",
        "smoke http://myapp.default/health",
    ]
    assert cluster.deployments["myapp"] == "myapp:2.0" and cluster.replicas["myapp"] == 4  # same replicas
    # the fake cluster saw the last old pod go 2 s into its poll and the first new one ready 3 s
    # into the next: the downtime is measured between these two observed moments
    downtime = result.downtime
    assert downtime is not None and downtime.ended_at is not None
    assert downtime.seconds == (downtime.ended_at - downtime.started_at).total_seconds()
    assert 0.5 <= downtime.seconds <= 2
    assert f"downtime {downtime.seconds:.1f}s" in result.reason
    status = await handle.query(RecreateWorkflow.status)
    assert status.downtime == downtime
    assert [e.kind for e in result.events if e.kind.startswith("downtime")] == ["downtimeBegan", "downtimeEnded"]


async def test_new_version_never_ready_brings_the_old_one_back(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.never_ready.add("myapp:2.0")
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK and "did not get a first ready pod" in result.reason
    assert cluster.actions == [
        *FORWARD,
        "never ready myapp",
        OLD_BACK,
        "first ready myapp myapp:1.0",  # the downtime ends when the old version serves again
        "ready myapp",  # and the run waits until it is complete
    ]
    assert (cluster.deployments["myapp"], cluster.replicas["myapp"]) == ("myapp:1.0", 4)
    assert result.downtime is not None and result.downtime.seconds is not None


async def test_failed_smoke_test_brings_the_old_version_back(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.smoke_status = 500
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK and "answered 500" in result.reason
    assert cluster.actions[-2:] == [OLD_BACK, "ready myapp"]  # the new version served: downtime already over
    assert cluster.deployments["myapp"] == "myapp:1.0"


async def test_abort_while_the_new_version_starts(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.hanging.add("myapp:2.0")
    handle = await start(time_skipping_env, task_queue)
    await until_phase(handle, Phase.ROLLING_OUT)
    status = await handle.query(RecreateWorkflow.status)
    assert status.downtime is not None and status.downtime.ended_at is None  # shown while it lasts
    await handle.signal(RecreateWorkflow.abort, Decision(by="dave", reason="too long"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED and result.by == "dave"
    assert cluster.actions == [*FORWARD, OLD_BACK, "first ready myapp myapp:1.0", "ready myapp"]
    assert cluster.hung == 0 and cluster.deployments["myapp"] == "myapp:1.0"


async def test_pause_is_a_durable_approval(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, spec(pause={}))
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    await time_skipping_env.sleep(timedelta(minutes=30))
    await handle.signal(RecreateWorkflow.rollback, Decision(by="erin", reason="customers complain"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED and "customers complain" in result.reason
    assert cluster.actions[-2:] == [OLD_BACK, "ready myapp"]


async def test_timed_pause_then_finish(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    handle = await start(time_skipping_env, task_queue, spec(pause={"duration": "15m"}))
    await until_phase(handle, Phase.OBSERVING)
    status = await handle.query(RecreateWorkflow.status)
    assert status.timer_ends_at is not None
    result = await handle.result()
    assert result.outcome == Outcome.PROMOTED and result.finished_at - status.timer_ends_at < timedelta(seconds=5)


async def test_first_deployment_has_no_downtime(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.deployments.clear()
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.PROMOTED and result.downtime is None
    assert "first deployment" in result.reason and cluster.actions[0] == "apply myapp myapp:2.0"
