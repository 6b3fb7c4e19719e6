"""The building blocks every strategy shares.

A strategy workflow subclasses `DeploymentWorkflow` and gets, in one place: the signals a person
sends (approve, abort, rollback), the `status` query, the record of events, the phase shown in the
Temporal UI, the activity timeouts and retry policies, and the shared steps (wait for a rollout,
smoke test, approval gate, an interruptible durable timer). Workflow code only: no I/O here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities
    from activities.smoke import smoke_test
    from deploy_models import (
        OUTCOME_PHASE,
        Decision,
        DeploymentInput,
        DeploymentResult,
        DeploymentSpec,
        DeploymentStatus,
        Event,
        ObjectRef,
        Outcome,
        Phase,
        RolloutState,
        RolloutWait,
        ServiceSwitch,
        SmokeCheck,
        SmokeResult,
        SmokeTest,
        WorkloadSpec,
        format_duration,
    )

T = TypeVar("T")

DEPLOY_APP = SearchAttributeKey.for_keyword("DeployApp")
DEPLOY_NAMESPACE = SearchAttributeKey.for_keyword("DeployNamespace")
DEPLOY_STRATEGY = SearchAttributeKey.for_keyword("DeployStrategy")
DEPLOY_PHASE = SearchAttributeKey.for_keyword("DeployPhase")
DEPLOY_IMAGE = SearchAttributeKey.for_keyword("DeployImage")
SEARCH_ATTRIBUTES = (DEPLOY_APP, DEPLOY_NAMESPACE, DEPLOY_STRATEGY, DEPLOY_PHASE, DEPLOY_IMAGE)

# Kubernetes reads and writes: transient API errors (429, 5xx, timeouts) are retried with
# back-off; a bounded budget so a broken cluster ends the run instead of hanging it.
KUBERNETES_CALL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=10,
    ),
)
# Putting traffic back is retried until it succeeds: a run never ends while traffic is wrong.
RESTORE_CALL: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
    ),
)
ROLLOUT_HEARTBEAT = timedelta(seconds=30)

# Activity failures that are a verdict on the new version (it rolls back, exit code 3), as
# opposed to the tool or the cluster failing (exit code 1).
VERDICT_ERRORS = {"RolloutFailed", "SmokeTestFailed"}


class StepFailed(Exception):
    """A step failed: the run compensates and ends with `outcome`."""

    def __init__(self, reason: str, outcome: Outcome = Outcome.ROLLED_BACK) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class Interrupted(Exception):
    """A person asked to stop (abort or rollback): the run compensates and ends."""

    def __init__(self, signal: str, decision: Decision) -> None:
        super().__init__(f"{signal} by {decision.by}")
        self.signal = signal
        self.decision = decision


def _failure_reason(step: str, error: ActivityError) -> StepFailed:
    cause = error.cause
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    message = cause.message if cause is not None and hasattr(cause, "message") else str(error)
    verdict = isinstance(cause, ApplicationError) and cause.type in VERDICT_ERRORS
    return StepFailed(f"{step}: {message}", Outcome.ROLLED_BACK if verdict else Outcome.FAILED)


class DeploymentWorkflow:
    """State, signals, query and shared steps of a deployment run."""

    spec: DeploymentSpec
    requested_by: str
    phase: Phase
    events: list[Event]
    started_at: datetime
    active_version: str | None
    new_version: str | None
    previous_version: str | None
    timer_ends_at: datetime | None
    approval: Decision | None
    interruption: tuple[str, Decision] | None
    result: DeploymentResult | None

    def _begin(self, deployment: DeploymentInput) -> None:
        self.spec = deployment.spec
        self.requested_by = deployment.requested_by
        self.phase = Phase.PENDING
        self.events = []
        self.started_at = workflow.now()
        self.active_version = None
        self.new_version = None
        self.previous_version = None
        self.timer_ends_at = None
        self.approval = None
        self.interruption = None
        self.result = None
        self.record(
            "started",
            f"{self.spec.strategy.type} of {self.spec.app} to {self.spec.image}",
            by=self.requested_by,
        )

    # -- what a person sends and reads ---------------------------------------------------------

    @workflow.signal(description="Let a waiting step go on. Payload: {\"by\": \"name\", \"reason\": \"why\"}.")
    def approve(self, decision: Decision) -> None:
        self.record("approve", "approval received", by=decision.by, reason=decision.reason)
        if self.approval is None:
            self.approval = decision

    @workflow.signal(description="Stop now and put traffic back. Payload: {\"by\": \"name\", \"reason\": \"why\"}.")
    def abort(self, decision: Decision) -> None:
        self.record("abort", "abort received", by=decision.by, reason=decision.reason)
        if self.interruption is None and self.result is None:
            self.interruption = ("abort", decision)

    @workflow.signal(description="Switch traffic back to the previous version at once. Payload: {\"by\": \"name\", \"reason\": \"why\"}.")
    def rollback(self, decision: Decision) -> None:
        self.record("rollback", "rollback received", by=decision.by, reason=decision.reason)
        if self.interruption is None and self.result is None:
            self.interruption = ("rollback", decision)

    @workflow.query(description="Phase, versions, timer and every recorded event of this run.")
    def status(self) -> DeploymentStatus:
        return DeploymentStatus(
            app=self.spec.app,
            namespace=self.spec.namespace,
            strategy=self.spec.strategy.type,
            image=self.spec.image,
            phase=self.phase,
            active_version=self.active_version,
            new_version=self.new_version,
            previous_version=self.previous_version,
            started_at=self.started_at,
            updated_at=self.events[-1].at if self.events else self.started_at,
            timer_ends_at=self.timer_ends_at,
            events=list(self.events),
            result=self.result,
        )

    # -- the record ----------------------------------------------------------------------------

    def record(self, kind: str, message: str, by: str | None = None, reason: str | None = None) -> None:
        """Append an event to the run's record (the status query, the result, the worker log)."""
        self.events.append(Event(at=workflow.now(), kind=kind, message=message, by=by, reason=reason))
        workflow.logger.info("%s: %s%s", kind, message, f" (by {by})" if by else "")
        self._show_details()

    def set_phase(self, phase: Phase, message: str) -> None:
        self.phase = phase
        self.record("phase", f"{phase.value}: {message}")
        if DEPLOY_PHASE.name in {key.name for key in _registered_keys()}:
            workflow.upsert_search_attributes([SearchAttributePair(DEPLOY_PHASE, phase.value)])

    def _show_details(self) -> None:
        """The Markdown the Temporal UI shows as this run's current details."""
        lines = [
            f"**{self.spec.app}** `{self.spec.strategy.type}` → `{self.spec.image}`",
            "",
            f"- phase: **{self.phase.value}**",
            f"- active version: {self.active_version or '—'}; new: {self.new_version or '—'}",
        ]
        if self.timer_ends_at is not None:
            lines.append(f"- current timer ends at {self.timer_ends_at.isoformat(timespec='seconds')}")
        if self.approval is not None:
            lines.append(f"- approved by {self.approval.by}: {self.approval.reason or '(no reason)'}")
        lines += ["", "| at | event | by |", "|---|---|---|"]
        for event in self.events[-8:]:
            who = event.by or ""
            lines.append(f"| {event.at.strftime('%H:%M:%S')} | {event.message} | {who} |")
        workflow.set_current_details("\n".join(lines))

    # -- running steps -------------------------------------------------------------------------

    def raise_if_interrupted(self) -> None:
        if self.interruption is not None:
            raise Interrupted(*self.interruption)

    async def interruptible(self, step: str, awaitable: Awaitable[T]) -> T:
        """Run an activity, cancelling it the moment someone aborts; map failures to StepFailed."""
        self.raise_if_interrupted()
        task = asyncio.ensure_future(awaitable)
        await workflow.wait_condition(lambda: task.done() or self.interruption is not None)
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, ActivityError):
                pass
            self.raise_if_interrupted()
        try:
            return task.result()
        except ActivityError as error:
            raise _failure_reason(step, error) from None

    async def kubernetes(
        self,
        step: str,
        method: Callable[..., Awaitable[T]],
        arg: Any,
        summary: str,
        interruptible: bool = True,
    ) -> T:
        """A Kubernetes call with the shared retry budget.

        A write whose half-done state compensation could not tell apart (the traffic switch) is
        not interruptible: an abort then takes effect right after it.
        """
        call = workflow.execute_activity_method(method, arg, summary=summary, **KUBERNETES_CALL)
        if interruptible:
            return await self.interruptible(step, call)
        try:
            return await call
        except ActivityError as error:
            raise _failure_reason(step, error) from None

    async def restore(self, method: Callable[..., Awaitable[Any]], arg: Any, summary: str) -> None:
        """A compensating write: not interruptible, retried until it succeeds."""
        await workflow.execute_activity_method(method, arg, summary=summary, **RESTORE_CALL)

    async def roll_out(self, workload: WorkloadSpec, deadline: timedelta) -> RolloutState:
        """Apply a Deployment and wait until its rollout completes, failing at the deadline."""
        await self.kubernetes(
            f"apply {workload.name}",
            KubernetesActivities.apply_deployment,
            workload,
            summary=f"apply {workload.name} ({workload.image})",
        )
        wait = RolloutWait(
            namespace=workload.namespace, name=workload.name, deadline=workflow.now() + deadline
        )
        state = await self.interruptible(
            f"rollout of {workload.name}",
            workflow.execute_activity_method(
                KubernetesActivities.wait_for_rollout,
                wait,
                summary=f"wait for {workload.name} to be ready (deadline {format_duration(deadline)})",
                start_to_close_timeout=deadline + timedelta(minutes=1),
                schedule_to_close_timeout=deadline + timedelta(minutes=2),
                heartbeat_timeout=ROLLOUT_HEARTBEAT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            ),
        )
        self.record("rollout", f"{workload.name} ready: {state.message}")
        return state

    async def smoke(self, smoke: SmokeTest | None, **placeholders: str) -> SmokeResult | None:
        """The HTTP smoke test: `retries` further attempts, `interval` apart, then a verdict."""
        if smoke is None:
            return None
        url = smoke.url.format(**placeholders)
        check = SmokeCheck(url=url, expect_status=smoke.expect_status, timeout=smoke.timeout)
        result = await self.interruptible(
            "smoke test",
            workflow.execute_activity(
                smoke_test,
                check,
                summary=f"GET {url} expecting {smoke.expect_status}",
                start_to_close_timeout=smoke.timeout + timedelta(seconds=5),
                retry_policy=RetryPolicy(
                    initial_interval=smoke.interval,
                    backoff_coefficient=1.0,
                    maximum_attempts=smoke.retries + 1,
                ),
            ),
        )
        self.record("smokeTest", f"GET {url} answered {result.status} in {result.elapsed_ms:.0f} ms")
        return result

    async def await_approval(self, timeout: timedelta | None, what: str) -> None:
        """A durable wait for `approve`; `abort` ends it, and so does `timeout` (as an abort)."""
        if self.approval is None:
            self.timer_ends_at = workflow.now() + timeout if timeout else None
            self.set_phase(Phase.AWAITING_APPROVAL, f"waiting for approval to {what}")
            try:
                await workflow.wait_condition(
                    lambda: self.approval is not None or self.interruption is not None,
                    timeout=timeout,
                    timeout_summary=f"approval to {what}",
                )
            except asyncio.TimeoutError:
                raise StepFailed(
                    f"approval to {what} was not given within {format_duration(timeout or timedelta())}",
                    Outcome.ABORTED,
                ) from None
            finally:
                self.timer_ends_at = None
        self.raise_if_interrupted()
        assert self.approval is not None
        self.record("approved", f"{what} approved", by=self.approval.by, reason=self.approval.reason)

    async def hold(self, duration: timedelta, summary: str) -> None:
        """A durable timer that abort/rollback cuts short (raising Interrupted)."""
        self.timer_ends_at = workflow.now() + duration
        self._show_details()
        try:
            await workflow.wait_condition(
                lambda: self.interruption is not None, timeout=duration, timeout_summary=summary
            )
        except asyncio.TimeoutError:
            pass
        finally:
            self.timer_ends_at = None
        self.raise_if_interrupted()

    async def finish(self, outcome: Outcome, reason: str, by: str | None = None) -> DeploymentResult:
        """Record the outcome, show it, and return it once every signal handler is done."""
        self.set_phase(OUTCOME_PHASE[outcome], reason)
        self.result = DeploymentResult(
            outcome=outcome,
            reason=reason,
            by=by,
            app=self.spec.app,
            namespace=self.spec.namespace,
            image=self.spec.image,
            active_version=self.active_version,
            previous_version=self.previous_version,
            started_at=self.started_at,
            finished_at=workflow.now(),
            events=list(self.events),
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.result


def _registered_keys() -> list[SearchAttributeKey[Any]]:
    """Search attribute keys this run has (the time-skipping test server supports none)."""
    return [key for key, _ in workflow.info().typed_search_attributes]


def switch_spec(spec: DeploymentSpec, service: str, from_version: str | None, to_version: str) -> ServiceSwitch:
    return ServiceSwitch(
        namespace=spec.namespace,
        name=service,
        app=spec.app,
        from_version=from_version,
        to_version=to_version,
        target_port=spec.container_port,
    )


def workload_spec(spec: DeploymentSpec, version: str, deadline: timedelta) -> WorkloadSpec:
    return WorkloadSpec(
        namespace=spec.namespace,
        name=f"{spec.app}-{version}",
        app=spec.app,
        version=version,
        image=spec.image,
        replicas=spec.replicas,
        container_port=spec.container_port,
        progress_deadline_seconds=max(1, int(deadline.total_seconds())),
    )


def deployment_ref(spec: DeploymentSpec, version: str) -> ObjectRef:
    return ObjectRef(namespace=spec.namespace, name=f"{spec.app}-{version}")
