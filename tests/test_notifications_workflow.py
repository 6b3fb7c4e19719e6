"""Notifications from the workflows (time-skipping server, `notify` faked by name): which phase
changes are announced, to which of the spec's webhooks, and that a failing webhook never holds
up or fails a deployment."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentInput, DeploymentResult, Outcome, Phase, parse_spec
from tests.conftest import eventually, worker_for_test
from tests.fakes import FakeCluster
from workflows.blue_green import BlueGreenWorkflow
from workflows.canary import CanaryWorkflow
from workflows.telemetry import NOTIFY_CALL

SLACK = {"urlFrom": {"env": "SLACK_WEBHOOK_URL"}, "format": "slack", "events": ["awaitingApproval", "promoted", "rolledBack", "aborted"]}


def blue_green(**notifications: Any) -> Any:
    return parse_spec({
        "app": "myapp",
        "image": "myapp:2.0",
        "strategy": {"type": "blueGreen", "blueGreen": {"approval": {}}},
        "notifications": notifications or {"webhooks": [SLACK]},
    })


@pytest.fixture
async def cluster(time_skipping_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FakeCluster]:
    fake = FakeCluster(services={"myapp": "blue"}, deployments={"myapp-blue": "myapp:1.0", "myapp-stable": "myapp:1.0"})
    async with worker_for_test(time_skipping_env, task_queue, [BlueGreenWorkflow, CanaryWorkflow], fake.activities()):
        yield fake


async def start(env: WorkflowEnvironment, task_queue: str, spec: Any, workflow: Any = BlueGreenWorkflow) -> WorkflowHandle[Any, DeploymentResult]:
    return await env.client.start_workflow(
        workflow.run, DeploymentInput(spec=spec, requested_by="ci"), id=f"deploy-{uuid.uuid4()}", task_queue=task_queue
    )


async def awaiting_approval(handle: WorkflowHandle[Any, Any]) -> None:
    async def reached() -> bool:
        return (await handle.query(BlueGreenWorkflow.status)).phase == Phase.AWAITING_APPROVAL

    await eventually(reached, what="the approval gate")


async def test_phase_changes_are_announced_to_the_webhooks_that_want_them(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, blue_green())
    await awaiting_approval(handle)
    await handle.signal(BlueGreenWorkflow.approve, Decision(by="alice"))
    assert (await handle.result()).outcome == Outcome.PROMOTED

    sent = [(n.event, n.phase, len(n.webhooks)) for n in cluster.notifications]
    # every event goes to the worker's webhooks; the spec's Slack webhook only gets what it lists
    assert sent == [("started", Phase.PENDING, 0), ("awaitingApproval", Phase.AWAITING_APPROVAL, 1), ("promoted", Phase.PROMOTED, 1)]
    assert {n.key for n in cluster.notifications} == {f"{handle.id}/{handle.result_run_id}/{i}" for i in (1, 2, 3)}
    assert cluster.notifications[0].by == "ci"
    assert cluster.notifications[1].webhooks[0].url_from is not None  # the reference, not a URL
    assert cluster.notifications[2].message == "myapp serves myapp:2.0 from green"


async def test_an_abort_says_by_whom(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    handle = await start(time_skipping_env, task_queue, blue_green())
    await awaiting_approval(handle)
    await handle.signal(BlueGreenWorkflow.abort, Decision(by="bob", reason="freeze"))
    assert (await handle.result()).outcome == Outcome.ABORTED
    last = cluster.notifications[-1]
    assert (last.event, last.by, last.message) == ("aborted", "bob", "abort by bob: freeze")


async def test_a_rollback_gives_its_reason(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    cluster.metrics = lambda name, weight, at: 0.05 if name.startswith("error-rate") else 0.2
    spec = parse_spec({
        "app": "myapp",
        "image": "myapp:2.0",
        "strategy": {"type": "canary", "canary": {"steps": [{"setWeight": 20}, {"analysis": {}}], "promoteFromLastWeight": True}},
        "analysis": {"prometheus": {"url": "http://prometheus:9090"}},
        "notifications": {"webhooks": [SLACK]},
    })
    result = await (await start(time_skipping_env, task_queue, spec, CanaryWorkflow)).result()
    assert result.outcome == Outcome.ROLLED_BACK
    last = cluster.notifications[-1]
    assert last.event == "rolledBack" and "error-rate" in last.message and len(last.webhooks) == 1


async def test_a_failing_webhook_neither_blocks_nor_fails_the_deployment(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.notify_fails = True
    handle = await start(time_skipping_env, task_queue, blue_green())
    await awaiting_approval(handle)  # reached although every notification so far failed
    await handle.signal(BlueGreenWorkflow.approve, Decision(by="alice"))
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    attempts = NOTIFY_CALL["retry_policy"].maximum_attempts
    events = [n.event for n in cluster.notifications]
    assert {event: events.count(event) for event in events} == {"started": attempts, "awaitingApproval": attempts, "promoted": attempts}
    # the run closed after its last notification gave up, within that notification's budget
    closed = (await handle.describe()).close_time
    assert closed is not None and closed - result.finished_at <= NOTIFY_CALL["schedule_to_close_timeout"]
