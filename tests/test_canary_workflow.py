"""Canary on the time-skipping test server: weights, analysis timing, the no-data rule, signals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentInput, DeploymentResult, Outcome, Phase, parse_spec
from tests.conftest import eventually, worker_for_test
from tests.fakes import FakeCluster
from workflows.canary import CanaryWorkflow

INTERVAL = timedelta(seconds=30)


def spec(steps: list[dict[str, Any]] | None = None, **analysis: Any) -> Any:
    canary: dict[str, Any] = {"smokeTest": {"url": "http://{service}.{namespace}/health"}}
    if steps is not None:
        canary["steps"] = steps
        canary["promoteFromLastWeight"] = True  # several plans stop short of 100%: promotion completes them
    return parse_spec(
        {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {"type": "canary", "canary": canary},
            "analysis": {"prometheus": {"url": "http://prometheus:9090"}, "interval": "30s", **analysis},
        }
    )


@pytest.fixture
async def cluster(time_skipping_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FakeCluster]:
    fake = FakeCluster(deployments={"myapp-stable": "myapp:1.0"}, replicas={"myapp-stable": 3})
    async with worker_for_test(time_skipping_env, task_queue, [CanaryWorkflow], fake.activities()):
        yield fake


async def start(env: WorkflowEnvironment, task_queue: str, deployment_spec: Any = None) -> WorkflowHandle[Any, DeploymentResult]:
    return await env.client.start_workflow(
        CanaryWorkflow.run,
        DeploymentInput(spec=deployment_spec or spec(), requested_by="ci"),
        id=f"deploy-{uuid.uuid4()}",
        task_queue=task_queue,
    )


async def until(handle: WorkflowHandle[Any, Any], phase: Phase, weight: int | None = None) -> None:
    async def reached() -> bool:
        status = await handle.query(CanaryWorkflow.status)
        return status.phase == phase and (weight is None or status.weight == weight)

    await eventually(reached, what=f"phase {phase} at weight {weight}")


def weight_set_at(cluster: FakeCluster, weight: int) -> datetime:
    return next(at for at, w in cluster.weights if w == weight)


def breach(weight: int, after: timedelta, cluster: FakeCluster) -> Any:
    """Error rate 5% once the canary has been at `weight` for `after` (the canary turns bad)."""

    def metrics(name: str, current: int, at: datetime) -> float:
        if name.startswith("error-rate") and current == weight and at >= weight_set_at(cluster, weight) + after:
            return 0.05
        return 0.2 if name.startswith("p99") else 0.001

    return metrics


async def test_default_plan_promotes(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.PROMOTED
    assert [w for _, w in cluster.weights] == [5, 25, 50, 100, 0]
    assert cluster.deployments == {"myapp-stable": "myapp:2.0", "myapp-canary": "myapp:2.0"}
    assert cluster.replicas["myapp-canary"] == 0
    assert result.previous_image == "myapp:1.0"
    # four 10-minute windows, measured every 30 s the whole time
    assert len(cluster.measurements) == 4 * 20
    assert weight_set_at(cluster, 100) - weight_set_at(cluster, 5) >= timedelta(minutes=30)
    # the canary was ready and smoke tested before it got any traffic
    assert cluster.actions.index("smoke http://myapp-canary.default/health") < cluster.actions.index("weight 5")


async def test_breach_at_25_rolls_back_within_one_interval(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.metrics = breach(25, timedelta(minutes=3, seconds=10), cluster)
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert [w for _, w in cluster.weights] == [5, 25, 0]
    breached_at = weight_set_at(cluster, 25) + timedelta(minutes=3, seconds=10)
    assert weight_set_at(cluster, 0) - breached_at <= INTERVAL
    assert cluster.replicas["myapp-canary"] == 0
    assert cluster.deployments["myapp-stable"] == "myapp:1.0"
    failed = result.failed_measurement
    assert failed is not None
    check = next(c for c in failed.checks if c.name == "error-rate")
    assert (check.value, check.bound) == (0.05, "≤ 0.01")
    assert 'version="v2"' in check.query
    assert "error-rate = 0.05, above 0.01" in result.reason and "http_requests_total" in result.reason


async def test_breach_at_5_never_reaches_25(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    cluster.metrics = breach(5, timedelta(seconds=0), cluster)
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert [w for _, w in cluster.weights] == [5, 0]
    assert len(cluster.measurements) == 1


async def test_no_data_is_never_a_pass(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    cluster.metrics = lambda name, weight, at: None
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert len(cluster.measurements) == 4 + 1  # inconclusiveLimit 4: the fifth in a row fails
    assert "inconclusive 5 times in a row" in result.reason and "no data" in result.reason
    assert [w for _, w in cluster.weights] == [5, 0]


async def test_prometheus_errors_beyond_the_limit_roll_back(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.metrics = lambda name, weight, at: f"{name}: http://prometheus:9090 answered 503"
    result = await (await start(time_skipping_env, task_queue, spec(consecutiveErrorLimit=2))).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert len(cluster.measurements) == 3
    assert "could not measure 3 times in a row" in result.reason and "http://prometheus:9090" in result.reason


async def test_failure_limit_tolerates_isolated_failures(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    bad = {2, 7}
    cluster.metrics = lambda name, weight, at: 0.05 if len(cluster.measurements) in bad and "error" in name else 0.001
    steps = [{"setWeight": 50}, {"pause": {"duration": "5m"}}]
    result = await (await start(time_skipping_env, task_queue, spec(steps, failureLimit=2))).result()

    assert result.outcome == Outcome.PROMOTED
    assert len(cluster.measurements) == 10


async def test_relative_check_compares_with_stable(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    checks = [
        {
            "name": "error-rate",
            "query": 'errors{version="{{version}}"}',
            "relative": {"maxIncrease": 0.005},
        }
    ]
    steps = [{"setWeight": 20}, {"pause": {"duration": "2m"}}]

    # A cluster-wide incident: both versions at 3% errors. The canary is not to blame.
    cluster.metrics = lambda name, weight, at: 0.03
    result = await (await start(time_skipping_env, task_queue, spec(steps, checks=checks))).result()
    assert result.outcome == Outcome.PROMOTED

    # The canary at 3%, stable at 1%: worse by more than half a point.
    cluster.canary_weight = 0
    cluster.weights.clear()
    cluster.deployments["myapp-stable"] = "myapp:1.0"
    cluster.metrics = lambda name, weight, at: 0.03 if name.endswith("@v2") else 0.01
    result = await (await start(time_skipping_env, task_queue, spec(steps, checks=checks))).result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert "more than 0.005 above v1's 0.01" in result.reason
    assert result.failed_measurement is not None and result.failed_measurement.checks[0].baseline == 0.01


async def test_manual_pause_waits_for_approval(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    await until(handle, Phase.AWAITING_APPROVAL, weight=10)
    assert cluster.canary_weight == 10

    await handle.signal(CanaryWorkflow.approve, Decision(by="alice", reason="graphs are flat"))
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED
    assert [w for _, w in cluster.weights] == [10, 100, 0]
    approved = next(e for e in result.events if e.kind == "approved")
    assert approved.by == "alice" and approved.reason == "graphs are flat"


async def test_approve_is_ignored_when_nothing_waits(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    steps = [{"setWeight": 10}, {"pause": {"duration": "10m"}}, {"setWeight": 50}, {"pause": {}}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    await until(handle, Phase.OBSERVING, weight=10)
    await handle.signal(CanaryWorkflow.approve, Decision(by="early"))
    # let the 10-minute pause run out; end between two 30-s measurements of the next pause (the
    # test server mishandles an abort that cancels an activity completing at that instant)
    await time_skipping_env.sleep(timedelta(minutes=11, seconds=15))
    await until(handle, Phase.AWAITING_APPROVAL, weight=50)  # the early approve did not skip this gate
    await handle.signal(CanaryWorkflow.abort, Decision(by="ci"))
    result = await handle.result()
    assert any(e.message.startswith("approve ignored") for e in result.events)


async def test_abort_mid_pause_rolls_back(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    steps = [{"setWeight": 30}, {"pause": {}}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    await until(handle, Phase.AWAITING_APPROVAL, weight=30)
    await handle.signal(CanaryWorkflow.abort, Decision(by="bob", reason="pager went off"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED
    assert result.by == "bob" and "pager went off" in result.reason
    assert cluster.canary_weight == 0 and cluster.replicas["myapp-canary"] == 0
    assert cluster.deployments["myapp-stable"] == "myapp:1.0"


async def test_promote_skips_the_remaining_steps(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    handle = await start(time_skipping_env, task_queue)
    await until(handle, Phase.OBSERVING, weight=5)
    await handle.signal(CanaryWorkflow.promote, Decision(by="carol", reason="hotfix"))
    result = await handle.result()

    assert result.outcome == Outcome.PROMOTED and result.by == "carol"
    assert [w for _, w in cluster.weights] == [5, 0]
    assert cluster.deployments["myapp-stable"] == "myapp:2.0"
    assert "promoted early by carol" in result.reason


async def test_failing_rollback_patches_are_retried_until_weight_0(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    steps = [{"setWeight": 40}, {"pause": {}}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    await until(handle, Phase.AWAITING_APPROVAL, weight=40)
    cluster.weight_failures = 2
    await handle.signal(CanaryWorkflow.abort, Decision(by="dave"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED
    assert cluster.actions.count("weight 0 failed") == 2
    assert cluster.canary_weight == 0


async def test_one_off_analysis_step(time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster) -> None:
    steps = [{"setWeight": 20}, {"analysis": {"checks": ["p99-latency"]}}, {"setWeight": 60}]
    cluster.metrics = lambda name, weight, at: 2.5 if name.startswith("p99") and weight == 20 else 0.001
    result = await (await start(time_skipping_env, task_queue, spec(steps))).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert "p99-latency = 2.5, above 1" in result.reason
    assert [w for _, w in cluster.weights] == [20, 0]


async def test_first_deployment_goes_straight_to_stable(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.deployments.clear()
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.PROMOTED and "first deployment" in result.reason
    assert cluster.deployments == {"myapp-stable": "myapp:2.0"}
    assert cluster.weights == [] and cluster.measurements == []


async def test_canary_never_ready_gets_no_traffic(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.never_ready.add("myapp-canary")
    result = await (await start(time_skipping_env, task_queue)).result()

    assert result.outcome == Outcome.ROLLED_BACK and "progress deadline" in result.reason
    assert [w for _, w in cluster.weights] == [0]  # the rollback re-asserts 0; never above
    assert cluster.replicas["myapp-canary"] == 0


async def test_a_failed_promotion_puts_stable_back_as_it_was(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    """The canary passed, but stable never gets ready with the new image: stable's recorded
    template comes back (and is ready again) before traffic returns to it."""
    cluster.never_ready.add("myapp-stable myapp:2.0")
    steps = [{"setWeight": 50}, {"pause": {"duration": "1m"}}]
    result = await (await start(time_skipping_env, task_queue, spec(steps))).result()

    assert result.outcome == Outcome.ROLLED_BACK and "rollout of myapp-stable" in result.reason
    assert cluster.deployments["myapp-stable"] == "myapp:1.0" and cluster.replicas["myapp-stable"] == 3
    assert cluster.canary_weight == 0 and cluster.replicas["myapp-canary"] == 0
    actions = cluster.actions
    assert actions.index("restore myapp-stable myapp:1.0 replicas=3") < actions.index("weight 0")
    assert actions[-2:] == ["scale myapp-canary 0", "ready myapp-stable"]  # the restored stable is ready again
    assert any(e.kind == "restored" for e in result.events)


async def test_abort_during_promotion_puts_stable_back(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    cluster.hanging.add("myapp-stable myapp:2.0")  # stable's rollout to the new image takes its time
    steps = [{"setWeight": 100}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    await until(handle, Phase.PROMOTING)
    await eventually(lambda: cluster.hung > 0, what="stable's rollout under way")
    await handle.signal(CanaryWorkflow.abort, Decision(by="erin", reason="wrong tag"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED and result.by == "erin" and "wrong tag" in result.reason
    assert cluster.deployments["myapp-stable"] == "myapp:1.0"
    assert cluster.canary_weight == 0 and cluster.replicas["myapp-canary"] == 0


async def test_a_pause_that_ends_without_a_passing_measurement_is_measured_again(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    """A pause shorter than the limits allow must not wave a canary through on no data: the
    pause ends on an inconclusive measurement, so the run measures again until one passes (here
    it never does, so the inconclusive limit rolls back)."""
    cluster.metrics = lambda name, weight, at: None
    steps = [{"setWeight": 50}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]
    result = await (await start(time_skipping_env, task_queue, spec(steps))).result()

    assert result.outcome == Outcome.ROLLED_BACK and "inconclusive 5 times in a row" in result.reason
    assert [w for _, w in cluster.weights] == [50, 0] and cluster.deployments["myapp-stable"] == "myapp:1.0"
    assert any("ended on inconclusive: measuring again" in e.message for e in result.events)

    # data arrives after the pause: two measurements in the pause, a third without data after
    # it, and the fourth passes and lets the plan go on
    cluster.measurements.clear()
    cluster.metrics = lambda name, weight, at: None if len(cluster.measurements) <= 3 else 0.001
    result = await (await start(time_skipping_env, task_queue, spec(steps))).result()
    assert result.outcome == Outcome.PROMOTED and len(cluster.measurements) == 4


async def test_errors_and_no_data_in_turn_never_pass_for_good(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    """Alternating, errors and no data would each reset the other's count: counted together."""
    cluster.metrics = lambda name, weight, at: None if len(cluster.measurements) % 2 else "http://prometheus:9090 answered 503"
    steps = [{"setWeight": 20}, {"pause": {"duration": "10m"}}]
    result = await (await start(time_skipping_env, task_queue, spec(steps))).result()

    assert result.outcome == Outcome.ROLLED_BACK
    assert "no usable measurement (no data or an error) 5 times in a row (limit 4)" in result.reason
    assert len(cluster.measurements) == 5


async def test_a_refused_rollback_patch_is_retried_until_traffic_is_back(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster
) -> None:
    """A 403 on the rollback's weight patch (say, RBAC changed mid-run) is not the end: the run
    records it, retries with a back-off, and ends only when the weight is 0."""
    steps = [{"setWeight": 30}, {"pause": {}}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    await until(handle, Phase.AWAITING_APPROVAL, weight=30)
    cluster.weight_refusals = 2
    await handle.signal(CanaryWorkflow.abort, Decision(by="ivan", reason="bad dashboards"))
    result = await handle.result()

    assert result.outcome == Outcome.ABORTED and cluster.canary_weight == 0
    assert cluster.actions.count("weight 0 refused") == 2
    retries = [e for e in result.events if e.kind == "restoreRetry"]
    assert len(retries) == 2 and "403 Forbidden" in retries[0].message
    assert "trying again in 30s" in retries[0].message and "trying again in 1m" in retries[1].message


async def test_a_wait_that_outgrows_one_run_rolls_back_while_it_can(
    time_skipping_env: WorkflowEnvironment, task_queue: str, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporal ends a run at 51,200 history events, without compensation: a canary left waiting
    for approval (measured every interval) rolls back before that. The budget is made small here."""
    import deploy_models

    monkeypatch.setattr(deploy_models, "MEASUREMENT_BUDGET", 10)  # 200 events
    steps = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]
    handle = await start(time_skipping_env, task_queue, spec(steps))
    result = await handle.result()

    assert result.outcome == Outcome.FAILED and "near the 51,200 at which Temporal ends a run" in result.reason
    assert cluster.canary_weight == 0 and cluster.replicas["myapp-canary"] == 0
    events = len((await handle.fetch_history()).events)
    assert 200 < events < 400 and 5 <= len(cluster.measurements) <= 12  # about 20 events each
