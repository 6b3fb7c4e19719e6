"""Blue/green on the time-skipping test server, with the activities faked by name."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentInput, DeploymentResult, Outcome, Phase, parse_spec
from tests.conftest import eventually, worker_for_test
from tests.fakes import FakeCluster
from workflows.blue_green import BlueGreenWorkflow


def spec(**blue_green: Any) -> Any:
    return parse_spec(
        {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {
                "type": "blueGreen",
                "blueGreen": {"smokeTest": {"url": "http://{service}.{namespace}:8080/health"}, **blue_green},
            },
        }
    )


@pytest.fixture
async def cluster(time_skipping_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FakeCluster]:
    fake = FakeCluster(services={"myapp": "blue"}, deployments={"myapp-blue": "myapp:1.0"})
    async with worker_for_test(time_skipping_env, task_queue, [BlueGreenWorkflow], fake.activities()):
        yield fake


async def start(env: WorkflowEnvironment, task_queue: str, **blue_green: Any) -> WorkflowHandle[Any, DeploymentResult]:
    return await env.client.start_workflow(
        BlueGreenWorkflow.run,
        DeploymentInput(spec=spec(**blue_green), requested_by="ci"),
        id=f"deploy-{uuid.uuid4()}",
        task_queue=task_queue,
    )


async def until_phase(handle: WorkflowHandle[Any, Any], phase: Phase) -> None:
    async def reached() -> bool:
        return (await handle.query(BlueGreenWorkflow.status)).phase == phase

    await eventually(reached, what=f"phase {phase}")


def event_time(result: DeploymentResult, kind: str, containing: str = "") -> Any:
    return next(e.at for e in result.events if e.kind == kind and containing in e.message)


async def test_promotes_and_deletes_old_colour_after_ten_minutes(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue)
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    assert result.active_version == "green" and result.previous_version == "blue"
    assert cluster.actions == [
        "apply myapp-green myapp:2.0",
        "ready myapp-green",
        "smoke http://myapp-green.default:8080/health",
        "switch myapp blue->green",
        "delete myapp-blue",
    ]
    assert cluster.services["myapp"] == "green"
    assert cluster.deployments == {"myapp-green": "myapp:2.0"}
    kept = event_time(result, "phase", "CleaningUp") - event_time(result, "switched")
    assert timedelta(minutes=10) <= kept < timedelta(minutes=11)


async def test_first_deployment_creates_blue_and_the_service(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.services.clear()
    cluster.deployments.clear()
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.PROMOTED
    assert cluster.services["myapp"] == "blue"
    assert cluster.deployments == {"myapp-blue": "myapp:2.0"}
    assert "switch myapp None->blue" in cluster.actions
    assert not any(a.startswith("delete") for a in cluster.actions)


async def test_smoke_failure_keeps_traffic_and_removes_new_colour(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.smoke_status = 503
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert "smoke test" in result.reason and "503" in result.reason
    assert cluster.actions.count("smoke http://myapp-green.default:8080/health") == 4  # 1 + 3 retries
    assert not any(a.startswith("switch") for a in cluster.actions)
    assert cluster.services["myapp"] == "blue"
    assert cluster.deployments == {"myapp-blue": "myapp:1.0"}


async def test_rollout_never_ready_ends_at_progress_deadline(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.never_ready.add("myapp-green")
    result = await (await start(time_skipping_env, task_queue, progressDeadline="2m")).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert "progress deadline" in result.reason
    assert cluster.actions == ["apply myapp-green myapp:2.0", "rollout failed myapp-green", "delete myapp-green"]
    assert cluster.services["myapp"] == "blue"


async def test_approval_gate_waits_then_switches(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, approval={}, scaleDownDelay="0s")
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    assert cluster.services["myapp"] == "blue"  # nothing switched while waiting

    await handle.signal(BlueGreenWorkflow.approve, Decision(by="alice", reason="dashboards look fine"))
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    assert cluster.services["myapp"] == "green"
    approved = next(e for e in result.events if e.kind == "approved")
    assert approved.by == "alice" and approved.reason == "dashboards look fine"


async def test_abort_while_waiting_for_approval(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, approval={})
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    await handle.signal(BlueGreenWorkflow.abort, Decision(by="bob", reason="wrong build"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED
    assert result.by == "bob" and "wrong build" in result.reason
    assert cluster.services["myapp"] == "blue"
    assert cluster.deployments == {"myapp-blue": "myapp:1.0"}
    assert not any(a.startswith("switch") for a in cluster.actions)


async def test_approval_timeout_aborts(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    result = await (await start(time_skipping_env, task_queue, approval={"timeout": "1h"})).result()

    assert result.outcome == Outcome.ABORTED
    assert "not given within 1h" in result.reason
    assert cluster.services["myapp"] == "blue"
    assert "myapp-green" not in cluster.deployments


async def test_rollback_inside_the_window_switches_back_at_once(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue)
    await until_phase(handle, Phase.KEEPING_PREVIOUS)
    assert cluster.services["myapp"] == "green"

    await handle.signal(BlueGreenWorkflow.rollback, Decision(by="carol", reason="error budget"))
    result = await handle.result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert result.by == "carol" and result.active_version == "blue"
    assert cluster.services["myapp"] == "blue"
    assert cluster.deployments == {"myapp-blue": "myapp:1.0"}  # old colour kept, new removed
    assert cluster.actions[-2:] == ["switch myapp green->blue", "delete myapp-green"]
    # "at once": the switch back happens well inside the 10-minute window
    assert event_time(result, "switchedBack") - event_time(result, "switched") < timedelta(minutes=1)


async def test_failing_switch_back_is_retried_until_it_succeeds(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue)
    await until_phase(handle, Phase.KEEPING_PREVIOUS)
    cluster.switch_failures = 2
    await handle.signal(BlueGreenWorkflow.abort, Decision(by="dave"))
    result = await handle.result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert cluster.actions.count("switch myapp failed") == 2
    assert cluster.services["myapp"] == "blue"


async def test_status_query_reports_phase_colours_and_events(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, approval={})
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    status = await handle.query(BlueGreenWorkflow.status)

    assert status.active_version == "blue" and status.new_version == "green"
    assert [e.kind for e in status.events][:2] == ["started", "phase"]
    assert status.events[0].by == "ci"
    await handle.signal(BlueGreenWorkflow.abort, Decision(by="ci"))
    await handle.result()


def analysed(**blue_green: Any) -> Any:
    return parse_spec(
        {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {"type": "blueGreen", "blueGreen": {"scaleDownDelay": "5m", **blue_green}},
            "analysis": {"prometheus": {"url": "http://prometheus:9090"}, "interval": "1m"},
        }
    )


async def test_analysis_watches_the_new_colour_while_the_old_one_is_kept(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await time_skipping_env.client.start_workflow(
        BlueGreenWorkflow.run, DeploymentInput(spec=analysed(), requested_by="ci"),
        id=f"deploy-{uuid.uuid4()}", task_queue=task_queue,
    )
    result = await handle.result()
    assert result.outcome == Outcome.PROMOTED and cluster.services["myapp"] == "green"
    assert len(cluster.measurements) == 5  # every minute of the 5-minute window
    switched = event_time(result, "switched")
    assert all(switched < at <= switched + timedelta(minutes=5, seconds=1) for at in cluster.measurements)
    last = (await handle.query(BlueGreenWorkflow.status)).last_measurement
    assert last is not None and 'version="green"' in last.checks[0].query


async def test_a_failed_analysis_after_the_switch_switches_back(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.metrics = lambda name, weight, at: 0.05 if len(cluster.measurements) >= 3 and "error" in name else 0.001
    result = await (
        await time_skipping_env.client.start_workflow(
            BlueGreenWorkflow.run, DeploymentInput(spec=analysed(), requested_by="ci"),
            id=f"deploy-{uuid.uuid4()}", task_queue=task_queue,
        )
    ).result()
    assert result.outcome == Outcome.ROLLED_BACK and "error-rate = 0.05, above 0.01" in result.reason
    assert len(cluster.measurements) == 3
    assert cluster.services["myapp"] == "blue" and cluster.deployments == {"myapp-blue": "myapp:1.0"}
    assert event_time(result, "switchedBack") - event_time(result, "switched") < timedelta(minutes=3, seconds=5)


async def test_an_abort_after_the_point_of_no_return_is_recorded_as_too_late(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    """Once the old colour is being deleted there is nothing to switch back to: the run ends
    promoted, and says that the abort came too late and what to do instead."""
    cluster.delete_failures = 2  # the clean-up's retries keep it in CleaningUp for a few seconds
    handle = await start(time_skipping_env, task_queue, scaleDownDelay="0s")
    await until_phase(handle, Phase.CLEANING_UP)
    await handle.signal(BlueGreenWorkflow.abort, Decision(by="heidi", reason="saw an alert"))
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED and cluster.services["myapp"] == "green"
    late = next(e for e in result.events if e.kind == "tooLate")
    assert late.by == "heidi" and late.reason == "saw an alert" and "tidegate undo" in late.message
