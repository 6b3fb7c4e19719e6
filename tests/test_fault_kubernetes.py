"""A canary run through the real Kubernetes activities while the API misbehaves.

The worker runs the real `KubernetesActivities` (the official client over HTTP) and the real smoke
test against the emulated cluster, whose fault injection answers chosen requests with 409, 429,
503 or 403 before anything is stored; only the metrics are fake (always healthy). The run is a
real canary workflow on the time-skipping test server, so the back-off between retries and the
pauses cost no wall time. The test server's clock would also move while an activity runs (a
rollout wait would miss its heartbeats by virtual minutes), so it is moved by hand, and only while
no activity is running: `Faults.drive`.

Asserted is what a user would check: the stored VirtualService and Deployments as the run left
them, the run's outcome and reason, and the attempts recorded in the history.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, PendingActivityState, RetryState
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.kubernetes import deployment_manifest
from activities.metrics import measure
from deploy_models import (
    Decision,
    DeploymentInput,
    DeploymentResult,
    DeploymentStatus,
    MeasureRequest,
    MetricValue,
    Outcome,
    Phase,
    WorkloadSpec,
    parse_spec,
)
from sandbox.cluster import DEPLOYMENTS, VIRTUALSERVICES, ClusterEmulator, status_response
from tests.conftest import worker_for_test
from tests.test_kubernetes_activities import Kube, kube  # noqa: F401 (kube: the fixture)
from worker import activities_for
from workflows.canary import CanaryWorkflow

NS = "default"
STEP = timedelta(seconds=5)  # virtual time moved at a time, while no activity runs
RUN_TIMEOUT = 120.0  # wall-clock seconds a run may take here (a loaded machine included)
# setWeight 20, observe for a minute, then all traffic to the canary and promotion
STEPS: list[dict[str, Any]] = [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]


@activity.defn(name="measure")
async def healthy_metrics(request: MeasureRequest) -> list[MetricValue]:
    """Prometheus as it reads for a healthy canary: every check well within its bounds."""
    return [MetricValue(name=query.name, query=query.query, value=0.001) for query in request.queries]


@dataclass
class Faults:
    """The emulated cluster, a worker with the real activities, and a canary run to drive."""

    env: WorkflowEnvironment
    emulator: ClusterEmulator
    kube_url: str
    task_queue: str
    custom: Any  # the CustomObjectsApi, for someone's hand edit

    def fail_next(self, verb: str, resource: Any, answer: Any, times: int, after: int = 0) -> None:
        """`times` requests of `verb` on `resource`, `after` requests from now, get `answer`
        (nothing is stored)."""
        view = self.emulator[verb, resource]
        first = len(view) + after
        view[first : first + times] << answer

    def requests(self, verb: str, resource: Any) -> int:
        """How many `verb` requests on `resource` the API server has answered (faults included)."""
        return len(self.emulator[verb, resource])

    def weights(self) -> tuple[int, int]:
        """(stable %, canary %) as stored in the VirtualService."""
        route = self.virtual_service()["spec"]["http"][0]["route"]
        by_subset = {destination["destination"]["subset"]: destination["weight"] for destination in route}
        return by_subset["v1"], by_subset["v2"]

    def virtual_service(self) -> dict[str, Any]:
        found = self.emulator.get(VIRTUALSERVICES, NS, "myapp")
        assert found is not None
        return found

    def deployment(self, name: str) -> dict[str, Any]:
        found = self.emulator.get(DEPLOYMENTS, NS, name)
        assert found is not None, name
        return found

    def image(self, name: str) -> str:
        return self.deployment(name)["spec"]["template"]["spec"]["containers"][0]["image"]

    async def start(self, steps: list[dict[str, Any]] = STEPS) -> WorkflowHandle[Any, DeploymentResult]:
        health = f"{self.kube_url}/api/v1/namespaces/{{namespace}}/services/{{service}}:80/proxy/health"
        spec = parse_spec(
            {
                "app": "myapp",
                "image": "myapp:2.0",
                "replicas": 2,
                "strategy": {"type": "canary", "canary": {"steps": steps, "smokeTest": {"url": health}}},
                "analysis": {"prometheus": {"url": "http://prometheus:9090"}, "interval": "30s"},
            }
        )
        return await self.env.client.start_workflow(
            CanaryWorkflow.run,
            DeploymentInput(spec=spec, requested_by="ci"),
            id=f"deploy-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def drive(
        self, handle: WorkflowHandle[Any, DeploymentResult], until: Callable[[DeploymentStatus], bool] | None = None
    ) -> DeploymentStatus | None:
        """Move the run's clock `STEP` at a time whenever no activity runs (a retry's back-off and
        timers pass at once), until `until(status)` holds (returning that status) or the run ends."""

        async def drive() -> DeploymentStatus | None:
            while True:
                description = await handle.describe()
                if description.status != WorkflowExecutionStatus.RUNNING:
                    return None
                if until is not None:
                    status = await handle.query(CanaryWorkflow.status)
                    if until(status):
                        return status
                if any(attempt_running(a) for a in description.raw_description.pending_activities):
                    await asyncio.sleep(0.02)  # an activity runs: real time only
                else:
                    await self.env.sleep(STEP)

        return await asyncio.wait_for(drive(), RUN_TIMEOUT)

    async def finish(self, handle: WorkflowHandle[Any, DeploymentResult]) -> DeploymentResult:
        await self.drive(handle)
        return await handle.result()


def attempt_running(pending: PendingActivityInfo) -> bool:
    """Whether an attempt of the activity is running now (not scheduled, not in a retry's
    back-off: the test server shows that as started, its last attempt complete)."""
    if pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
        return False
    if not pending.HasField("last_attempt_complete_time"):
        return True
    return pending.last_started_time.ToNanoseconds() > pending.last_attempt_complete_time.ToNanoseconds()


@pytest.fixture
async def faults(time_skipping_env: WorkflowEnvironment, task_queue: str, kube: Kube) -> AsyncIterator[Faults]:
    """The emulated cluster with `myapp-stable` running myapp:1.0, and a worker on it."""
    api = kube.activities.api
    stable = WorkloadSpec(
        namespace=NS, name="myapp-stable", app="myapp", version="v1", image="myapp:1.0",
        replicas=2, container_port=8080, progress_deadline_seconds=60,
    )
    await kube.activities.apps.create_namespaced_deployment(namespace=NS, body=deployment_manifest(stable))
    activities = [a for a in activities_for(api) if a is not measure] + [healthy_metrics]
    faults = Faults(time_skipping_env, kube.emulator, api.configuration.host, task_queue, kube.activities.custom)
    with time_skipping_env.auto_time_skipping_disabled():
        async with worker_for_test(time_skipping_env, task_queue, [CanaryWorkflow], activities):
            yield faults


@dataclass
class ActivityEnd:
    """How one activity (all its attempts) ended, as the history records it."""

    attempt: int  # the attempt that ended it
    completed: bool
    failure: Failure
    retry_state: RetryState.ValueType


async def activity_ends(handle: WorkflowHandle[Any, Any], activity_type: str) -> list[ActivityEnd]:
    """How each `activity_type` activity of the run ended, in order."""
    events = (await handle.fetch_history()).events
    scheduled = {
        event.event_id
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    }
    attempts = {
        event.event_id: event.activity_task_started_event_attributes.attempt
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and event.activity_task_started_event_attributes.scheduled_event_id in scheduled
    }
    ends = []
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            if done.started_event_id in attempts:
                ends.append(ActivityEnd(attempts[done.started_event_id], True, Failure(), RetryState.RETRY_STATE_UNSPECIFIED))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            if failed.started_event_id in attempts:
                ends.append(ActivityEnd(attempts[failed.started_event_id], False, failed.failure, failed.retry_state))
    return ends


async def test_conflict_on_every_weight_patch_fails_the_run_without_moving_traffic(faults: Faults) -> None:
    faults.emulator["patch", VIRTUALSERVICES] << status_response(409, "Conflict", "the object has been modified")
    handle = await faults.start()
    result = await faults.finish(handle)

    assert result.outcome == Outcome.FAILED
    assert "setWeight 20" in result.reason and "VirtualService default/myapp" in result.reason
    assert "409 Conflict" in result.reason and "(its retries are spent)" in result.reason
    # the budget: 10 attempts, then the run ends
    weight_write, rollback = await activity_ends(handle, "set_canary_weight")
    assert weight_write.attempt == 10 and faults.requests("patch", VIRTUALSERVICES) == 10
    assert weight_write.retry_state == RetryState.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED
    assert "409 Conflict" in weight_write.failure.message
    assert rollback.completed and rollback.attempt == 1  # weight 0 is what is stored: nothing to patch
    # traffic never moved: the VirtualService's spec was never changed, and reads 100% stable
    assert faults.virtual_service()["metadata"]["generation"] == 1
    assert faults.weights() == (100, 0)
    assert faults.deployment("myapp-canary")["spec"]["replicas"] == 0
    assert faults.image("myapp-stable") == "myapp:1.0"


async def test_a_burst_of_throttling_and_unavailability_is_retried_and_the_run_goes_on(faults: Faults) -> None:
    faults.fail_next("patch", VIRTUALSERVICES, status_response(429, retry_after=1), times=2)
    faults.fail_next("patch", VIRTUALSERVICES, status_response(503, message="etcd leader changed"), times=2, after=2)
    handle = await faults.start()
    result = await faults.finish(handle)

    assert result.outcome == Outcome.PROMOTED, result.reason
    assert faults.weights() == (100, 0) and faults.image("myapp-stable") == "myapp:2.0"
    assert faults.deployment("myapp-canary")["spec"]["replicas"] == 0
    first = (await activity_ends(handle, "set_canary_weight"))[0]
    assert first.attempt == 5 and first.completed  # 2 × 429, 2 × 503, then stored
    # 5 patches for 20%, one for 100%, one for 0% at promotion; the failed ones stored nothing
    assert faults.requests("patch", VIRTUALSERVICES) == 7
    assert faults.virtual_service()["metadata"]["generation"] == 1 + 3


async def test_a_refused_stable_update_after_the_weight_moved_puts_all_traffic_back(faults: Faults) -> None:
    # RBAC lets tidegate create and scale Deployments but not replace them: promotion's update of
    # myapp-stable is refused once the canary has all the traffic
    refused = status_response(403, "Forbidden", 'deployments.apps "myapp-stable" is forbidden: cannot update')
    faults.emulator["put", DEPLOYMENTS] << refused
    handle = await faults.start()
    result = await faults.finish(handle)

    assert result.outcome == Outcome.FAILED
    assert "apply myapp-stable" in result.reason and "403 Forbidden" in result.reason
    assert faults.requests("put", DEPLOYMENTS) == 1  # not retried: the refusal is final
    weights = [event.message for event in result.events if event.kind == "weight"]
    assert weights == ["v2 20%, v1 80%", "v2 100%, v1 0%", "v2 0%, v1 100%"]
    # read back from the API server: all traffic on the stable version, which still runs 1.0
    assert faults.weights() == (100, 0)
    assert faults.image("myapp-stable") == "myapp:1.0"
    assert faults.deployment("myapp-canary")["spec"]["replicas"] == 0


async def test_a_failing_rollback_patch_is_retried_until_traffic_is_back(faults: Faults) -> None:
    handle = await faults.start([{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}])
    await faults.drive(handle, lambda status: status.phase == Phase.AWAITING_APPROVAL)
    assert faults.weights() == (70, 30)
    before = faults.requests("patch", VIRTUALSERVICES)
    failures = 12  # more than the 10 attempts a forward step gets
    faults.fail_next("patch", VIRTUALSERVICES, status_response(503, message="apiserver overloaded"), times=failures)
    await handle.signal(CanaryWorkflow.abort, Decision(by="oncall", reason="error budget burnt"))
    result = await faults.finish(handle)

    assert result.outcome == Outcome.ABORTED and "error budget burnt" in result.reason
    assert faults.weights() == (100, 0)
    assert faults.deployment("myapp-canary")["spec"]["replicas"] == 0
    assert faults.requests("patch", VIRTUALSERVICES) - before == failures + 1
    rollback = (await activity_ends(handle, "set_canary_weight"))[-1]
    assert rollback.attempt == failures + 1 and rollback.completed
    # the run ended only after the weight 0 was stored (and the canary scaled down)
    history = await handle.fetch_history()
    kinds = [event.event_type for event in history.events]
    last_activity_done = max(i for i, kind in enumerate(kinds) if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    assert kinds.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED) > last_activity_done
    assert [e.message for e in result.events if e.kind == "weight"][-1] == "v2 0%, v1 100%"


async def test_a_hand_edit_of_the_weights_is_detected_and_never_continued(faults: Faults) -> None:
    steps = [{"setWeight": 20}, {"pause": {"duration": "10m"}}, {"setWeight": 50}, {"pause": {"duration": "10m"}}, {"setWeight": 100}]
    handle = await faults.start(steps)
    observing = await faults.drive(handle, lambda status: status.phase == Phase.OBSERVING)
    assert observing is not None and faults.weights() == (80, 20)
    # someone sets 60/40 by hand in the middle of the pause
    await faults.custom.patch_namespaced_custom_object(
        group="networking.istio.io", version="v1", namespace=NS, plural="virtualservices", name="myapp",
        body=[
            {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 60},
            {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 40},
        ],
        _content_type="application/json-patch+json",
    )
    edited_at = observing.events[-1].at  # (the clock has not moved since)
    result = await faults.finish(handle)

    assert result.outcome == Outcome.ABORTED  # someone else intervened: the run stops, not a verdict
    assert "check weight" in result.reason
    assert "sends 40% to v2 and 60% to v1, but tidegate set 20%: someone else changed it" in result.reason
    # traffic ends at 100% stable; the run never went on from the hand-edited split
    assert faults.weights() == (100, 0)
    assert faults.deployment("myapp-canary")["spec"]["replicas"] == 0
    assert faults.image("myapp-stable") == "myapp:1.0"
    assert [e.message for e in result.events if e.kind == "weight"] == ["v2 20%, v1 80%", "v2 0%, v1 100%"]
    # noticed at the next measurement (30 s apart; the test's clock moves 5 s at a time), long
    # before the next step
    detected = next(e.at for e in result.events if e.kind == "phase" and e.message.startswith("RollingBack"))
    assert detected - edited_at < timedelta(seconds=40)
    assert not any("step 2: setWeight 50" in e.message for e in result.events)
