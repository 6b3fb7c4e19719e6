"""tidegate's own metrics and its notifications, from workflow code.

Metrics go through the workflow's metric meter (`workflow.metric_meter()`): it records nothing
while a worker replays a history, so a run is counted once however often it is replayed, and the
worker's Prometheus endpoint serves them next to the Temporal SDK's own. Notifications are
`notify` activities started in the background: a slow or failing webhook never holds up or fails
a deployment. `drain()` lets the last ones finish (each is bounded by NOTIFY_CALL's budget) before
the run returns, since activities still pending when a workflow completes are dropped.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from deploy_models import (
        DeploymentSpec,
        Measurement,
        Notification,
        NotifyEvent,
        Outcome,
        Phase,
    )

# A notification is retried for at most a minute (about five attempts), then given up on.
NOTIFY_CALL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=15),
    schedule_to_close_timeout=timedelta(minutes=1),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0, maximum_attempts=5),
)
PHASE_EVENTS: dict[Phase, NotifyEvent] = {
    Phase.AWAITING_APPROVAL: "awaitingApproval",
    Phase.PROMOTED: "promoted",
    Phase.ROLLED_BACK: "rolledBack",
    Phase.ABORTED: "aborted",
    Phase.FAILED: "failed",
}
# Histogram buckets, in seconds (the worker exports durations as seconds).
BUCKETS: dict[str, list[float]] = {
    "tidegate_breach_to_rollback_seconds": [1, 2, 5, 10, 30, 60, 120, 300, 600],
    "tidegate_approval_wait_seconds": [10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400],
}


def rollback_reason(outcome: Outcome, reason: str, failed_measurement: Measurement | None) -> str:
    """A low-cardinality label for why a run did not promote (the full reason is in the history)."""
    if failed_measurement is not None:
        return "analysis"
    for prefix, label in (
        ("abort by", "abort"),
        ("rollback by", "rollback"),
        ("the workflow was cancelled", "cancelled"),
        ("approval to", "approvalTimeout"),
        ("smoke test", "smokeTest"),
        ("rollout of", "rollout"),
    ):
        if reason.startswith(prefix):
            return label
    return "error" if outcome == Outcome.FAILED else "other"


class Reporter:
    """The metrics and notifications of one run."""

    def __init__(self, spec: DeploymentSpec) -> None:
        self.spec = spec
        self.sent = 0
        self.pending: list[asyncio.Task[None]] = []
        self.waiting_since: datetime | None = None
        self.weight: int | None = None
        self.meter = workflow.metric_meter().with_additional_attributes({"strategy": spec.strategy.type})

    # -- metrics ---------------------------------------------------------------------------

    def started(self, by: str) -> None:
        self.meter.create_counter("tidegate_deployments_started", "Deployments started, by strategy.").add(1)
        self.notify("started", Phase.PENDING, f"{self.spec.strategy.type} of {self.spec.app} to {self.spec.image}", by)

    def phase(self, old: Phase, new: Phase, message: str, by: str | None = None) -> None:
        """A phase change: the time spent waiting for approval, and a notification if wanted."""
        now = workflow.now()
        if old == Phase.AWAITING_APPROVAL and new != old and self.waiting_since is not None:
            self.meter.create_histogram_timedelta(
                "tidegate_approval_wait_seconds", "Time a run waited for a person's approval.", "s"
            ).record(now - self.waiting_since)
            self.waiting_since = None
        if new == Phase.AWAITING_APPROVAL and old != new:
            self.waiting_since = now
        event = PHASE_EVENTS.get(new)
        if event is not None and (old != new or event == "awaitingApproval"):
            self.notify(event, new, message, by)

    def canary_weight(self, weight: int | None) -> None:
        """The canary's current share of traffic, per app (a gauge: the last value set)."""
        if weight is None or weight == self.weight:
            return
        self.weight = weight
        self.meter.create_gauge("tidegate_canary_weight", "The canary's current share of traffic, in percent.", "%").set(
            weight, {"app": self.spec.app, "app_namespace": self.spec.namespace}
        )

    def finished(self, outcome: Outcome, reason: str, failed_measurement: Measurement | None) -> None:
        self.meter.create_counter(
            "tidegate_deployments_finished", "Deployments finished, by strategy and outcome."
        ).add(1, {"outcome": outcome.value})
        if outcome == Outcome.PROMOTED:
            return
        self.meter.create_counter(
            "tidegate_rollbacks", "Runs that put the previous version back, by why."
        ).add(1, {"reason": rollback_reason(outcome, reason, failed_measurement)})
        if failed_measurement is not None:
            self.meter.create_histogram_timedelta(
                "tidegate_breach_to_rollback_seconds",
                "From the measurement that failed the analysis to the end of the rollback.",
                "s",
            ).record(max(timedelta(0), workflow.now() - failed_measurement.at))

    # -- notifications ---------------------------------------------------------------------

    def notify(self, event: NotifyEvent, phase: Phase, message: str, by: str | None = None) -> None:
        """Start a `notify` activity in the background (the worker adds its own webhooks)."""
        info = workflow.info()
        self.sent += 1
        notification = Notification(
            key=f"{info.workflow_id}/{info.run_id}/{self.sent}",
            event=event,
            app=self.spec.app,
            namespace=self.spec.namespace,
            strategy=self.spec.strategy.type,
            image=self.spec.image,
            phase=phase,
            message=message,
            by=by,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            at=workflow.now(),
            webhooks=[hook for hook in (self.spec.notifications.webhooks if self.spec.notifications else []) if event in hook.events],
        )
        self.pending.append(asyncio.ensure_future(self._deliver(notification)))

    async def _deliver(self, notification: Notification) -> None:
        try:
            await workflow.execute_activity(
                "notify", notification, result_type=list[str], summary=f"notify: {notification.event}", **NOTIFY_CALL
            )
        except ActivityError as error:
            workflow.logger.warning("notification %s not delivered: %s", notification.event, error.cause or error)

    async def drain(self) -> None:
        """Wait for the notifications still on their way (each ends within its budget)."""
        await workflow.wait_condition(lambda: all(task.done() for task in self.pending))
