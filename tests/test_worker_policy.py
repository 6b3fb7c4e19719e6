"""The worker's own limits: namespaces it deploys to and who may approve, whatever a starter sends."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.policy import NamespaceGuard, PolicyError, WorkerPolicy, load_policy
from deploy_models import Decision, DeploymentInput, Outcome, Phase, ScaleRequest, parse_spec
from tests.conftest import eventually, until_phase, worker_for_test
from tests.fakes import FakeCluster
from workflows.blue_green import BlueGreenWorkflow
from workflows.canary import CanaryWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities


def blue_green(namespace: str = "default", **settings: Any) -> Any:
    return parse_spec(
        {"app": "myapp", "namespace": namespace, "image": "myapp:2.0", "strategy": {"type": "blueGreen", "blueGreen": settings}}
    )


async def start(env: WorkflowEnvironment, task_queue: str, spec: Any, kind: Any = BlueGreenWorkflow) -> Any:
    return await env.client.start_workflow(
        kind.run, DeploymentInput(spec=spec, requested_by="ci"), id=f"deploy-{uuid.uuid4()}", task_queue=task_queue
    )


def worker(env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster, policy: WorkerPolicy, *workflows: type) -> Any:
    cluster.policy = policy
    return worker_for_test(
        env, task_queue, [*workflows] or [BlueGreenWorkflow, CanaryWorkflow], cluster.activities(),
        interceptors=[NamespaceGuard(policy)],
    )


async def test_a_namespace_outside_the_allow_list_is_refused_before_any_change(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    cluster = FakeCluster(services={"myapp": "blue"}, deployments={"myapp-blue": "myapp:1.0"})
    async with worker(time_skipping_env, task_queue, cluster, WorkerPolicy(namespaces=frozenset({"staging", "qa"}))):
        result = await (await start(time_skipping_env, task_queue, blue_green("prod"))).result()
        assert result.outcome == Outcome.FAILED
        assert "namespace 'prod' is not one this worker deploys to (allowed: qa, staging)" in result.reason
        assert cluster.actions == []  # not even a read

        allowed = await (await start(time_skipping_env, task_queue, blue_green("staging", scaleDownDelay="0s"))).result()
        assert allowed.outcome == Outcome.PROMOTED and cluster.services["myapp"] == "green"


@workflow.defn(name="ScaleSomewhere", sandboxed=False)
class ScaleSomewhere:
    """Stands for any run that never asked the worker (one started before it had a policy)."""

    @workflow.run
    async def run(self, scale: ScaleRequest) -> None:
        await workflow.execute_activity_method(
            KubernetesActivities.scale_deployment, scale, start_to_close_timeout=timedelta(seconds=10)
        )


async def test_every_activity_is_guarded_whatever_the_workflow_sends(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    cluster = FakeCluster(deployments={"myapp-blue": "myapp:1.0"})
    async with worker(time_skipping_env, task_queue, cluster, WorkerPolicy(namespaces=frozenset({"staging"})), ScaleSomewhere):
        with pytest.raises(WorkflowFailureError) as failed:
            await time_skipping_env.client.execute_workflow(
                ScaleSomewhere.run, ScaleRequest(namespace="prod", name="myapp-blue", replicas=0),
                id=f"scale-{uuid.uuid4()}", task_queue=task_queue,
            )
        cause = failed.value.cause.cause
        assert cause.type == "NamespaceNotAllowed" and cause.non_retryable and "'prod'" in cause.message
        assert cluster.actions == []


async def test_only_the_apps_approvers_may_approve_and_a_refusal_is_recorded(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    cluster = FakeCluster(services={"myapp": "blue"}, deployments={"myapp-blue": "myapp:1.0"})
    policy = WorkerPolicy(approvers={"default/myapp": ("alice",), "myapp": ("nobody",)})
    async with worker(time_skipping_env, task_queue, cluster, policy):
        handle = await start(time_skipping_env, task_queue, blue_green(approval={}, scaleDownDelay="0s"))
        await until_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.signal(BlueGreenWorkflow.approve, Decision(by="mallory", reason="ship it"))

        async def refused() -> bool:
            status = await handle.query(BlueGreenWorkflow.status)
            return any(e.kind == "approveRefused" for e in status.events)

        await eventually(refused, what="the refusal recorded")
        status = await handle.query(BlueGreenWorkflow.status)
        assert status.phase == Phase.AWAITING_APPROVAL and cluster.services["myapp"] == "blue"

        await handle.signal(BlueGreenWorkflow.approve, Decision(by="alice", reason="dashboards fine"))
        result = await handle.result()
    assert result.outcome == Outcome.PROMOTED and cluster.services["myapp"] == "green"
    refusal = next(e for e in result.events if e.kind == "approveRefused")
    assert refusal.by == "mallory" and refusal.reason == "ship it"
    assert "not an approver of myapp (approvers: alice)" in refusal.message
    assert next(e for e in result.events if e.kind == "approved").by == "alice"


async def test_a_promotion_by_someone_else_is_refused_and_abort_is_open_to_anyone(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    cluster = FakeCluster(deployments={"myapp-stable": "myapp:1.0"})
    spec = parse_spec(
        {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {"type": "canary", "canary": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]}},
        }
    )
    async with worker(time_skipping_env, task_queue, cluster, WorkerPolicy(approvers={"myapp": ("alice",)})):
        handle = await start(time_skipping_env, task_queue, spec, CanaryWorkflow)
        await until_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.signal(CanaryWorkflow.promote, Decision(by="mallory"))
        await handle.signal(CanaryWorkflow.abort, Decision(by="oncall", reason="pager"))
        result = await handle.result()
    assert result.outcome == Outcome.ABORTED and result.by == "oncall"
    assert any(e.kind == "promoteRefused" and e.by == "mallory" for e in result.events)
    assert cluster.canary_weight == 0


def test_policy_settings_are_checked(tmp_path: Path) -> None:
    approvers = tmp_path / "approvers.yaml"
    approvers.write_text("shop: [alice, bob]\nprod/payments: [carol]\n")
    policy = load_policy(["prod", "staging"], str(approvers))
    assert policy.namespaces == frozenset({"prod", "staging"})
    assert policy.approvers_of("prod", "payments") == ["carol"] and policy.approvers_of("qa", "payments") is None
    assert policy.approvers_of("qa", "shop") == ["alice", "bob"]
    assert load_policy([], None) == WorkerPolicy()

    for namespaces, text, message in [
        (["Prod"], None, "--namespaces: 'Prod' is not a DNS-1123 label"),
        ([], "- alice\n", "must be a mapping of app (or namespace/app) to names"),
        ([], "a/b/c: [x]\n", "a/b/c: 'a/b/c' is not app or namespace/app"),
        ([], "shop: []\n", "shop: must be a non-empty list of names"),
        ([], "shop: alice\n", "shop: must be a non-empty list of names"),
        ([], "shop: [alice\n", "--approvers"),
    ]:
        approvers.write_text(text or "")
        with pytest.raises(PolicyError) as error:
            load_policy(namespaces, str(approvers) if text is not None else None)
        assert message in str(error.value)
    with pytest.raises(PolicyError, match="No such file"):
        load_policy([], str(tmp_path / "missing.yaml"))


async def test_the_worker_refuses_to_start_with_a_bad_policy(capsys: pytest.CaptureFixture[str]) -> None:
    import worker

    with pytest.raises(SystemExit) as exited:
        await worker.main(["--namespaces", "prod,Bad_Name"])
    assert exited.value.code == 2
    assert "--namespaces: 'Bad_Name' is not a DNS-1123 label" in capsys.readouterr().err
