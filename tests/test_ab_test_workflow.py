"""A/B testing on the time-skipping test server: B against A, the route, the timer, the decision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentResult, Outcome, Phase, parse_spec
from tests.conftest import eventually, start_run, until_phase, worker_for_test
from tests.fakes import FakeCluster
from workflows.ab_test import AbTestWorkflow

ROUTE = "tidegate-ab-myapp"
CHECKS = [
    {"name": "error-rate", "query": 'errors{version="{{version}}"}', "relative": {"maxIncrease": 0.002}},
    {"name": "conversion", "query": 'conversions{version="{{version}}"}', "relative": {"minIncrease": 0}},
]


def spec(checks: list[dict[str, Any]] | None = None, **ab_test: Any) -> Any:
    return parse_spec(
        {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {
                "type": "abTest",
                "abTest": {"duration": "1h", "smokeTest": {"url": "http://{service}.{namespace}/health"}, **ab_test},
            },
            "analysis": {"prometheus": {"url": "http://prometheus:9090"}, "interval": "5m", "checks": checks or CHECKS},
        }
    )


def figures(errors: tuple[float, float] = (0.01, 0.01), conversion: tuple[float, float] = (0.031, 0.03)) -> Any:
    """B's and A's values: (B, A) for each check."""

    def metrics(name: str, weight: int, at: Any) -> float:
        check, variant = name.split("@")
        b, a = errors if check == "error-rate" else conversion
        return b if variant == "v2" else a

    return metrics


@pytest.fixture
async def cluster(time_skipping_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FakeCluster]:
    fake = FakeCluster(deployments={"myapp-stable": "myapp:1.0"}, replicas={"myapp-stable": 3}, routes=["primary"])
    fake.metrics = figures()
    async with worker_for_test(time_skipping_env, task_queue, [AbTestWorkflow], fake.activities()):
        yield fake


async def start(env: WorkflowEnvironment, task_queue: str, deployment_spec: Any = None) -> WorkflowHandle[Any, DeploymentResult]:
    return await start_run(env, task_queue, AbTestWorkflow, deployment_spec or spec())


async def test_b_not_worse_is_promoted_after_the_experiment(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue)
    await until_phase(handle, Phase.EXPERIMENTING)
    assert cluster.routes == [ROUTE, "primary"]  # inserted before the other routes
    status = await handle.query(AbTestWorkflow.status)
    assert status.timer_ends_at is not None  # the experiment is a durable timer
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    assert "error-rate B 0.01 vs A 0.01, conversion B 0.031 vs A 0.03" in result.reason
    assert len(cluster.measurements) == 12  # every 5 minutes for an hour, both variants each time
    assert cluster.routes == ["primary"]  # removed: the VirtualService is as it was
    assert cluster.deployments == {"myapp-stable": "myapp:2.0", "myapp-canary": "myapp:2.0"}
    assert cluster.replicas["myapp-canary"] == 0 and [w for _, w in cluster.weights] == [0]
    # the route went before the canary's pods did
    assert cluster.actions.index(f"remove route {ROUTE}") < cluster.actions.index("scale myapp-canary 0")
    # B was ready and smoke tested before it got any request
    assert cluster.actions.index("smoke http://myapp-canary.default/health") < cluster.actions.index(f"add route {ROUTE}")


async def test_b_worse_rolls_back_and_removes_the_route(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.metrics = figures(errors=(0.02, 0.01))
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert "error-rate = 0.02, more than 0.002 above v1's 0.01" in result.reason
    assert len(cluster.measurements) == 1  # at the first measurement, not at the end of the hour
    failed = result.failed_measurement
    assert failed is not None and (failed.checks[0].value, failed.checks[0].baseline) == (0.02, 0.01)
    assert cluster.routes == ["primary"] and cluster.replicas["myapp-canary"] == 0
    assert cluster.deployments["myapp-stable"] == "myapp:1.0"
    assert cluster.actions.index(f"remove route {ROUTE}") < cluster.actions.index("scale myapp-canary 0")


async def test_a_business_metric_where_higher_is_better(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.metrics = figures(conversion=(0.027, 0.03))
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert "conversion = 0.027, not at least 0 above v1's 0.03" in result.reason


async def test_b_must_be_better_by_the_margin(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    # a negative maxIncrease: B's error rate must be at least 0.005 below A's
    better = [{"name": "error-rate", "query": 'errors{version="{{version}}"}', "relative": {"maxIncrease": -0.005}}]
    cluster.metrics = figures(errors=(0.008, 0.01))
    result = await (await start(time_skipping_env, task_queue, spec(better))).result()
    assert result.outcome == Outcome.ROLLED_BACK and "not at least 0.005 below v1's 0.01" in result.reason

    cluster.deployments["myapp-stable"] = "myapp:1.0"
    cluster.metrics = figures(errors=(0.004, 0.01))
    result = await (await start(time_skipping_env, task_queue, spec(better))).result()
    assert result.outcome == Outcome.PROMOTED


async def test_abort_mid_experiment_removes_the_route(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, spec(unmatchedWeight=10))
    await until_phase(handle, Phase.EXPERIMENTING)
    assert cluster.canary_weight == 10 and cluster.routes == [ROUTE, "primary"]
    # (between two measurements: the test server mishandles cancelling an activity it has just
    # scheduled, "ACTIVITY_UNKNOWN", which a real server does not)
    await time_skipping_env.sleep(timedelta(minutes=22))
    await handle.signal(AbTestWorkflow.abort, Decision(by="frank", reason="marketing changed its mind"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED and result.by == "frank"
    assert cluster.routes == ["primary"] and cluster.canary_weight == 0
    assert cluster.replicas["myapp-canary"] == 0 and cluster.deployments["myapp-stable"] == "myapp:1.0"


async def test_pause_shows_both_variants_and_waits_for_a_person(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue, spec(pause={}))
    await until_phase(handle, Phase.EXPERIMENTING)
    await time_skipping_env.sleep(timedelta(minutes=62))  # the hour of the experiment
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    status = await handle.query(AbTestWorkflow.status)
    checks = {c.name: (c.value, c.baseline) for c in status.last_measurement.checks}
    assert checks == {"error-rate": (0.01, 0.01), "conversion": (0.031, 0.03)}  # B's and A's figures
    assert cluster.routes == [ROUTE, "primary"]  # the experiment goes on while a person decides
    await time_skipping_env.sleep(timedelta(minutes=122))  # a durable wait, measured all along
    await handle.signal(AbTestWorkflow.approve, Decision(by="grace", reason="B converts better"))
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED and cluster.routes == ["primary"]
    assert any(e.kind == "approved" and e.by == "grace" for e in result.events)
    assert cluster.deployments["myapp-stable"] == "myapp:2.0"

    # the other answer: abort from the pause rolls back
    cluster.deployments["myapp-stable"] = "myapp:1.0"
    handle = await start(time_skipping_env, task_queue, spec(pause={}))
    await until_phase(handle, Phase.EXPERIMENTING)
    await time_skipping_env.sleep(timedelta(minutes=62))
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    await handle.signal(AbTestWorkflow.abort, Decision(by="grace", reason="B converts worse"))
    result = await handle.result()
    assert result.outcome == Outcome.ABORTED and cluster.routes == ["primary"]
    assert cluster.deployments["myapp-stable"] == "myapp:1.0"


async def test_inconclusive_end_is_measured_again(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    # no data for B at the very end of the hour: measured again until conclusive, never a pass
    good = figures()
    cluster.metrics = lambda name, weight, at: None if len(cluster.measurements) in (12, 13) else good(name, weight, at)
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.PROMOTED and len(cluster.measurements) == 14


async def test_first_deployment_has_nothing_to_compare_with(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.deployments.clear()
    result = await (await start(time_skipping_env, task_queue)).result()
    assert result.outcome == Outcome.PROMOTED and "first deployment" in result.reason
    assert cluster.routes == ["primary"] and cluster.measurements == []


async def test_abort_during_promotion_puts_stable_back_and_removes_the_route(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.hanging.add("myapp-stable myapp:2.0")  # B won; stable's rollout to B takes its time
    handle = await start(time_skipping_env, task_queue)
    outcome = asyncio.ensure_future(handle.result())  # awaiting the result lets the server skip the hour
    await eventually(lambda: cluster.hung > 0, what="stable's rollout under way")
    assert (await handle.query(AbTestWorkflow.status)).phase == Phase.PROMOTING
    await handle.signal(AbTestWorkflow.abort, Decision(by="grace", reason="legal review"))
    result = await outcome

    assert result.outcome == Outcome.ABORTED and result.by == "grace"
    assert cluster.deployments["myapp-stable"] == "myapp:1.0" and cluster.replicas["myapp-stable"] == 3
    assert cluster.routes == ["primary"] and cluster.canary_weight == 0 and cluster.replicas["myapp-canary"] == 0
