"""`abort` in every phase of every strategy, on the time-skipping test server with fake activities.

Each case starts a run, holds it in one phase (a pod that never gets ready, a smoke test waiting
to retry, a pause, an analysis timer, a traffic write that keeps failing) and aborts it there with
a name and a reason. What a user would check afterwards is asserted: the outcome, all traffic on
the version that served before (weight 0, the Service selector, the recorded pod template), the
new version scaled to 0 or removed, and the aborter and the reason in the record.

Aborts come while the run clearly waits (a timer, a hung poll, a signal, a retry's back-off): the
test server mishandles an abort that cancels an activity completing at the same instant.
Not covered here: canary and A/B promotion (`Promoting`), and blue/green's `CleaningUp` (the old
colour is being deleted: there is nothing left to switch back to).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentResult, DeploymentStatus, Event, Outcome, Phase, parse_spec
from tests.conftest import eventually, start_run, until_phase, worker_for_test
from tests.fakes import FakeCluster
from workflows import WORKFLOWS

ABORT = Decision(by="oncall-bob", reason="pager went off during the rollout")
# heartbeats at once, so that a cancelled poll learns of it at once
CANCEL_AT_ONCE = timedelta(milliseconds=50)
# a smoke test that keeps failing, its next attempt 10 minutes away: the run waits in SmokeTesting
FAILING_SMOKE = {"url": "http://{service}.{namespace}/health", "retries": 5, "interval": "10m"}
SMOKE = {"url": "http://{service}.{namespace}/health"}
# in workflow time, from the abort to traffic back (generous: the figures are a few seconds)
TRAFFIC_BACK_WITHIN = timedelta(minutes=1)
A_B_CHECKS = [{"name": "error-rate", "query": 'errors{version="{{version}}"}', "relative": {"maxIncrease": 0.002}}]


def no_data(name: str, weight: int, at: datetime) -> None:
    """Prometheus has no figures: every measurement is inconclusive (never a pass)."""
    return None


@dataclass(frozen=True)
class Strategy:
    """How a strategy's cluster starts, and how it must look after an abort."""

    start: Callable[[], FakeCluster]
    restored: Callable[[FakeCluster], None]  # asserts all traffic on the previous version
    traffic_back: Callable[[Event], bool]  # the event recording that traffic is back


def blue_green_restored(cluster: FakeCluster) -> None:
    assert cluster.services["myapp"] == "blue"
    assert cluster.deployments == {"myapp-blue": "myapp:1.0"}  # green removed


def canary_restored(cluster: FakeCluster) -> None:
    assert cluster.canary_weight == 0
    assert cluster.replicas["myapp-canary"] == 0
    assert cluster.deployments["myapp-stable"] == "myapp:1.0" and cluster.replicas["myapp-stable"] == 3


def ab_test_restored(cluster: FakeCluster) -> None:
    canary_restored(cluster)
    assert cluster.routes == ["primary"]  # the match route removed, the others as they were


def in_place_restored(cluster: FakeCluster) -> None:
    assert (cluster.deployments["myapp"], cluster.replicas["myapp"]) == ("myapp:1.0", 4)
    assert cluster.strategies.get("myapp") is None  # the recorded strategy (none) back too
    # the recorded version put back last, and waited for until ready again
    restored = cluster.actions.index("restore myapp myapp:1.0 replicas=4")
    assert not any(action.startswith("update") for action in cluster.actions[restored:])
    assert cluster.actions[-1] == "ready myapp"


def weight_zero(event: Event) -> bool:
    return event.kind == "weight" and event.message.startswith("v2 0%")


STRATEGIES = {
    "blueGreen": Strategy(
        lambda: FakeCluster(services={"myapp": "blue"}, deployments={"myapp-blue": "myapp:1.0"}),
        blue_green_restored,
        # before the switch traffic never left blue: removing green is the end of the undo
        lambda event: event.kind in ("switchedBack", "removed"),
    ),
    "canary": Strategy(
        lambda: FakeCluster(deployments={"myapp-stable": "myapp:1.0"}, replicas={"myapp-stable": 3}),
        canary_restored,
        weight_zero,
    ),
    "abTest": Strategy(
        lambda: FakeCluster(deployments={"myapp-stable": "myapp:1.0"}, replicas={"myapp-stable": 3}, routes=["primary"]),
        ab_test_restored,
        weight_zero,
    ),
    "rolling": Strategy(
        lambda: FakeCluster(deployments={"myapp": "myapp:1.0"}, replicas={"myapp": 4}),
        in_place_restored,
        lambda event: event.kind == "rolledBack",
    ),
    "recreate": Strategy(
        lambda: FakeCluster(deployments={"myapp": "myapp:1.0"}, replicas={"myapp": 4}),
        in_place_restored,
        lambda event: event.kind == "rolledBack",
    ),
}


def hanging_new_pods(cluster: FakeCluster) -> None:
    cluster.hanging.add("myapp:2.0")


def failing_smoke(cluster: FakeCluster) -> None:
    cluster.smoke_status = 503


def a_poll_hangs(cluster: FakeCluster) -> bool:
    return cluster.hung > 0


def smoke_attempted(cluster: FakeCluster) -> bool:
    return any(action.startswith("smoke") for action in cluster.actions)


@dataclass(frozen=True)
class Case:
    """Abort a run of `strategy` while it is in `phase`."""

    strategy: str
    phase: Phase
    settings: dict[str, Any] = field(default_factory=dict)  # strategy settings
    analysis: dict[str, Any] | None = None
    prepare: Callable[[FakeCluster], None] = lambda cluster: None
    held: Callable[[FakeCluster], bool] = lambda cluster: True  # the run waits in the phase
    skip: timedelta | None = None  # workflow time to let pass before the phase is reached
    outcome: Outcome = Outcome.ABORTED

    @property
    def id(self) -> str:
        words = "".join(f"-{c.lower()}" if c.isupper() else c for c in self.phase.value).lstrip("-")
        return f"{self.strategy}-{words}"

    def spec(self) -> Any:
        document: dict[str, Any] = {
            "app": "myapp",
            "image": "myapp:2.0",
            "strategy": {"type": self.strategy, self.strategy: self.settings},
        }
        if self.analysis is not None:
            document["analysis"] = {"prometheus": {"url": "http://prometheus:9090"}, **self.analysis}
        return parse_spec(document)


def canary(steps: list[dict[str, Any]], smoke: dict[str, Any] = SMOKE) -> dict[str, Any]:
    return {"smokeTest": smoke, "steps": steps, "promoteFromLastWeight": True}


def ab_test(smoke: dict[str, Any] = SMOKE, **settings: Any) -> dict[str, Any]:
    return {"smokeTest": smoke, "duration": "10m", **settings}


def in_place(smoke: dict[str, Any] = SMOKE, **settings: Any) -> dict[str, Any]:
    return {"smokeTest": smoke, **settings}


CANARY_ANALYSIS = {"interval": "30s"}
A_B_ANALYSIS = {"interval": "5m", "checks": A_B_CHECKS}
AFTER_THE_EXPERIMENT = timedelta(minutes=11)  # between the 10-minute mark and the next measurement

CASES = [
    # blue/green: the new colour rolls out, is smoke tested, waits for approval, takes the traffic,
    # and the old colour is kept for the scale-down delay
    Case("blueGreen", Phase.ROLLING_OUT, {"smokeTest": SMOKE}, prepare=hanging_new_pods, held=a_poll_hangs),
    Case("blueGreen", Phase.SMOKE_TESTING, {"smokeTest": FAILING_SMOKE}, prepare=failing_smoke, held=smoke_attempted),
    Case("blueGreen", Phase.AWAITING_APPROVAL, {"smokeTest": SMOKE, "approval": {}}),
    # the switch is not interruptible: it completes (after its retries), then the abort switches back
    Case(
        "blueGreen",
        Phase.SWITCHING,
        {"smokeTest": SMOKE},
        prepare=lambda cluster: setattr(cluster, "switch_failures", 3),
        held=lambda cluster: "switch myapp failed" in cluster.actions,
        outcome=Outcome.ROLLED_BACK,
    ),
    Case("blueGreen", Phase.KEEPING_PREVIOUS, {"smokeTest": SMOKE}, outcome=Outcome.ROLLED_BACK),
    # canary
    Case("canary", Phase.ROLLING_OUT, canary([{"setWeight": 20}, {"pause": {}}]), CANARY_ANALYSIS,
         prepare=hanging_new_pods, held=a_poll_hangs),
    Case("canary", Phase.SMOKE_TESTING, canary([{"setWeight": 20}, {"pause": {}}], FAILING_SMOKE), CANARY_ANALYSIS,
         prepare=failing_smoke, held=smoke_attempted),
    # the weight write is not interruptible: the abort takes effect once it is done
    Case(
        "canary",
        Phase.SHIFTING_TRAFFIC,
        canary([{"setWeight": 20}, {"pause": {}}]),
        CANARY_ANALYSIS,
        prepare=lambda cluster: setattr(cluster, "weight_failures", 3),
        held=lambda cluster: "weight 20 failed" in cluster.actions,
    ),
    Case("canary", Phase.OBSERVING, canary([{"setWeight": 20}, {"pause": {"duration": "10m"}}]), CANARY_ANALYSIS),
    Case("canary", Phase.AWAITING_APPROVAL, canary([{"setWeight": 20}, {"pause": {}}]), CANARY_ANALYSIS),
    # an inconclusive one-off analysis waits an interval to measure again
    Case(
        "canary",
        Phase.ANALYSING,
        canary([{"setWeight": 20}, {"analysis": {}}]),
        CANARY_ANALYSIS,
        prepare=lambda cluster: setattr(cluster, "metrics", no_data),
        held=lambda cluster: len(cluster.measurements) >= 1,
    ),
    # stable's rollout to the new image takes its time: the abort puts stable's template back
    Case(
        "canary",
        Phase.PROMOTING,
        canary([{"setWeight": 100}]),
        CANARY_ANALYSIS,
        prepare=lambda cluster: cluster.hanging.add("myapp-stable myapp:2.0"),
        held=a_poll_hangs,
    ),
    # A/B test (its promotion is the canary's: tests/test_ab_test_workflow.py aborts it there too)
    Case("abTest", Phase.ROLLING_OUT, ab_test(), A_B_ANALYSIS, prepare=hanging_new_pods, held=a_poll_hangs),
    Case("abTest", Phase.SMOKE_TESTING, ab_test(FAILING_SMOKE), A_B_ANALYSIS, prepare=failing_smoke, held=smoke_attempted),
    Case(
        "abTest",
        Phase.SHIFTING_TRAFFIC,
        ab_test(unmatchedWeight=10),
        A_B_ANALYSIS,
        prepare=lambda cluster: setattr(cluster, "weight_failures", 3),
        held=lambda cluster: "weight 10 failed" in cluster.actions,
    ),
    Case("abTest", Phase.EXPERIMENTING, ab_test(unmatchedWeight=10), A_B_ANALYSIS),
    # no data at the end of the experiment: measured again an interval later
    Case(
        "abTest",
        Phase.ANALYSING,
        ab_test(),
        A_B_ANALYSIS,
        prepare=lambda cluster: setattr(cluster, "metrics", no_data),
        held=lambda cluster: len(cluster.measurements) >= 3,
        skip=AFTER_THE_EXPERIMENT,
    ),
    Case("abTest", Phase.AWAITING_APPROVAL, ab_test(pause={}), A_B_ANALYSIS, skip=AFTER_THE_EXPERIMENT),
    Case("abTest", Phase.OBSERVING, ab_test(pause={"duration": "30m"}), A_B_ANALYSIS, skip=AFTER_THE_EXPERIMENT),
    # rolling update
    Case("rolling", Phase.ROLLING_OUT, in_place(), prepare=hanging_new_pods, held=a_poll_hangs),
    Case("rolling", Phase.SMOKE_TESTING, in_place(FAILING_SMOKE), prepare=failing_smoke, held=smoke_attempted),
    Case("rolling", Phase.ANALYSING, in_place(analysisWindow="10m"), CANARY_ANALYSIS),
    Case("rolling", Phase.AWAITING_APPROVAL, in_place(pause={})),
    Case("rolling", Phase.OBSERVING, in_place(pause={"duration": "30m"})),
    # recreate: the old pods go (slowly), the new ones start (and never get ready), ...
    Case(
        "recreate",
        Phase.SCALING_DOWN,
        in_place(),
        prepare=lambda cluster: setattr(cluster, "scale_down_hangs", True),
        held=a_poll_hangs,
    ),
    Case("recreate", Phase.ROLLING_OUT, in_place(), prepare=hanging_new_pods, held=a_poll_hangs),
    Case("recreate", Phase.SMOKE_TESTING, in_place(FAILING_SMOKE), prepare=failing_smoke, held=smoke_attempted),
    Case("recreate", Phase.ANALYSING, in_place(analysisWindow="10m"), CANARY_ANALYSIS),
    Case("recreate", Phase.AWAITING_APPROVAL, in_place(pause={})),
    Case("recreate", Phase.OBSERVING, in_place(pause={"duration": "30m"})),
]


def phase_when(events: list[Event], kind: str) -> str:
    """The phase the run was in when the first `kind` event was recorded."""
    index = next(i for i, event in enumerate(events) if event.kind == kind)
    last_phase = next(event for event in reversed(events[:index]) if event.kind == "phase")
    return last_phase.message.split(":", 1)[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_abort(time_skipping_env: WorkflowEnvironment, task_queue: str, case: Case) -> None:
    strategy = STRATEGIES[case.strategy]
    workflow = WORKFLOWS[case.strategy]
    cluster = strategy.start()
    case.prepare(cluster)
    async with worker_for_test(
        time_skipping_env, task_queue, [workflow], cluster.activities(), max_heartbeat_throttle_interval=CANCEL_AT_ONCE
    ):
        handle = await start_run(time_skipping_env, task_queue, workflow, case.spec())
        if case.skip is not None:
            await time_skipping_env.sleep(case.skip)
        await until_phase(handle, case.phase)
        await eventually(lambda: case.held(cluster), what=f"the run waiting in {case.phase}")

        await handle.signal("abort", ABORT)
        result: DeploymentResult = await handle.result()
        status = await handle.query("status", result_type=DeploymentStatus)

    assert result.outcome == case.outcome, result.reason
    strategy.restored(cluster)
    assert cluster.hung == 0  # no poll outlives the run

    # who aborted, and why: in the result, and in the record the status query shows
    assert result.by == ABORT.by and ABORT.reason in result.reason
    events = status.events
    assert events == result.events and status.result == result
    abort = next(event for event in events if event.kind == "abort")
    assert (abort.by, abort.reason) == (ABORT.by, ABORT.reason)
    assert phase_when(events, "abort") == case.phase.value  # it came in the phase under test
    assert status.phase == {Outcome.ABORTED: Phase.ABORTED, Outcome.ROLLED_BACK: Phase.ROLLED_BACK}[case.outcome]
    assert events[-1].kind == "phase" and events[-1].message.startswith(f"{status.phase.value}: abort by {ABORT.by}")

    traffic_back = next(event for event in events if event.at >= abort.at and strategy.traffic_back(event))
    assert traffic_back.at - abort.at <= TRAFFIC_BACK_WITHIN

