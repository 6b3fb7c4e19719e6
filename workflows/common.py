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
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

from workflows.analysis import AnalysisLimits, Variants, describe_figures, format_value, judge, queries
from workflows.telemetry import Reporter

with workflow.unsafe.imports_passed_through():
    import deploy_models
    from activities.kubernetes import KubernetesActivities
    from activities.policy import WorkerPolicy
    from activities.smoke import SmokeTester
    from deploy_models import (
        OUTCOME_PHASE,
        Admission,
        AdmissionRequest,
        MeasureRequest,
        Measurement,
        MetricValue,
        Verdict,
        Decision,
        DeploymentRestore,
        DeploymentSnapshot,
        Downtime,
        DeploymentInput,
        DeploymentResult,
        DeploymentSpec,
        DeploymentStatus,
        Event,
        ObjectRef,
        Outcome,
        Pause,
        Phase,
        RolloutState,
        RolloutWait,
        ServiceSpec,
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
ROLLOUT_HEARTBEAT = timedelta(seconds=10)


def polling(deadline: timedelta) -> dict[str, Any]:
    """Options of an activity that polls the cluster (heartbeating) until `deadline` from now.

    An abort cancels the poll and waits until it has stopped (it learns of the cancellation at
    its next heartbeat; worker.py's worker sends one at least every ABORT_NOTICE, a second): no
    poller outlives the step it served.
    """
    return dict(
        start_to_close_timeout=deadline + timedelta(minutes=1),
        schedule_to_close_timeout=deadline + timedelta(minutes=2),
        heartbeat_timeout=ROLLOUT_HEARTBEAT,
        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )

# Activity failures that are a verdict on the new version (it rolls back, exit code 3), as
# opposed to the tool or the cluster failing (exit code 1).
VERDICT_ERRORS = {"RolloutFailed", "SmokeTestFailed"}
# Someone else changed what the run had set: it stops (an abort, exit code 3) rather than go on.
INTERVENTION_ERRORS = {"ConcurrentEdit"}


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


def root_cause(error: ActivityError) -> tuple[BaseException | None, str]:
    """The error the activity raised, and its message."""
    cause = error.cause
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    return cause, cause.message if cause is not None and hasattr(cause, "message") else str(error)


def _failure_reason(step: str, error: ActivityError) -> StepFailed:
    cause, message = root_cause(error)
    if error.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        message += " (its retries are spent)"
    elif error.retry_state == RetryState.TIMEOUT:
        message += " (out of time)"
    kind = cause.type if isinstance(cause, ApplicationError) else None
    if kind in VERDICT_ERRORS:
        return StepFailed(f"{step}: {message}", Outcome.ROLLED_BACK)
    return StepFailed(f"{step}: {message}", Outcome.ABORTED if kind in INTERVENTION_ERRORS else Outcome.FAILED)


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
    previous_image: str | None
    timer_ends_at: datetime | None
    approval: Decision | None
    awaiting_approval: bool
    promotion: Decision | None
    interruption: tuple[str, Decision] | None
    weight: int | None
    step: int | None
    last_measurement: Measurement | None
    downtime: Downtime | None
    limits: AnalysisLimits | None
    failed_measurement: Measurement | None
    result: DeploymentResult | None
    reporter: Reporter
    admission: Admission | None
    asks_worker: bool
    analysis_must_pass: bool
    restores_outlast_refusals: bool
    keeps_within_history: bool

    def _begin(self, deployment: DeploymentInput) -> None:
        # Patch checks come first: a check made after the notification task below has scheduled
        # its activity fails to replay (the marker precedes that command in the history).
        self.asks_worker = workflow.patched("worker-policy")
        # A pause whose last measurement did not pass is measured again until one does.
        self.analysis_must_pass = deployment.spec.analysis is not None and workflow.patched("analysis-must-pass")
        # Compensation retries even what retrying "cannot fix" (403, a deleted object), recorded.
        self.restores_outlast_refusals = workflow.patched("restore-retries-every-error")
        # A run that measures rolls back before its history outgrows what Temporal keeps.
        self.keeps_within_history = deployment.spec.analysis is not None and workflow.patched("history-budget")
        self.spec = deployment.spec
        self.requested_by = deployment.requested_by
        self.phase = Phase.PENDING
        self.events = []
        self.started_at = workflow.now()
        self.active_version = None
        self.new_version = None
        self.previous_version = None
        self.previous_image = None
        self.timer_ends_at = None
        self.approval = None
        self.awaiting_approval = False
        self.promotion = None
        self.interruption = None
        self.weight = None
        self.step = None
        self.last_measurement = None
        self.downtime = None
        self.limits = (
            AnalysisLimits(self.spec.analysis, unusable_together=self.analysis_must_pass) if self.spec.analysis else None
        )
        self.failed_measurement = None
        self.result = None
        self.reporter = Reporter(self.spec)
        self.admission = None
        self.record(
            "started",
            f"{self.spec.strategy.type} of {self.spec.app} to {self.spec.image}",
            by=self.requested_by,
        )
        self.reporter.started(self.requested_by)

    # -- what a person sends and reads ---------------------------------------------------------

    @workflow.signal(description="Let a waiting step go on. Payload: {\"by\": \"name\", \"reason\": \"why\"}.")
    def approve(self, decision: Decision) -> None:
        if not self.may_decide("approve", decision):
            return
        if not self.awaiting_approval:
            self.record("approve", "approve ignored: no step is waiting for approval", by=decision.by)
            return
        self.record("approve", "approval received", by=decision.by, reason=decision.reason)
        self.approval = decision

    @workflow.signal(description="Skip the remaining steps and analysis and promote now. Payload: {\"by\": \"name\", \"reason\": \"why\"}.")
    def promote(self, decision: Decision) -> None:
        if not self.may_decide("promote", decision):
            return
        self.record("promote", "promotion requested", by=decision.by, reason=decision.reason)
        if self.promotion is None and self.interruption is None and self.result is None:
            self.promotion = decision

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

    def may_decide(self, signal: str, decision: Decision) -> bool:
        """Whether `decision.by` may approve or promote, by the worker's list of approvers of the
        app (no list: anyone). A refusal is recorded; abort and rollback are never refused."""
        approvers = self.admission.approvers if self.admission is not None else None
        if approvers is None or decision.by in approvers:
            return True
        self.record(
            f"{signal}Refused",
            f"{signal} from {decision.by} refused: not an approver of {self.spec.app} "
            f"(approvers: {', '.join(approvers)})",
            by=decision.by,
            reason=decision.reason,
        )
        return False

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
            weight=self.weight,
            step=self.step,
            last_measurement=self.last_measurement,
            downtime=self.downtime,
            events=list(self.events),
            result=self.result,
        )

    # -- the record ----------------------------------------------------------------------------

    def record(self, kind: str, message: str, by: str | None = None, reason: str | None = None) -> None:
        """Append an event to the run's record (the status query, the result, the worker log)."""
        self.events.append(Event(at=workflow.now(), kind=kind, message=message, by=by, reason=reason))
        workflow.logger.info("%s: %s%s", kind, message, f" (by {by})" if by else "")
        self._show_details()

    def set_phase(self, phase: Phase, message: str, by: str | None = None) -> None:
        previous, self.phase = self.phase, phase
        self.record("phase", f"{phase.value}: {message}")
        self.reporter.phase(previous, phase, message, by)
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
        if self.weight is not None:
            lines.append(f"- canary weight: **{self.weight}%**" + (f" (step {self.step})" if self.step is not None else ""))
        if self.downtime is not None:
            lines.append(f"- downtime: **{describe_downtime(self.downtime)}**")
        if self.approval is not None:
            lines.append(f"- approved by {self.approval.by}: {self.approval.reason or '(no reason)'}")
        if self.last_measurement is not None:
            measurement = self.last_measurement
            lines += ["", f"last analysis ({measurement.at.strftime('%H:%M:%S')}): **{measurement.verdict.value}**", ""]
            # A fixed-width table in a code block: the UI's Markdown tables have no cell spacing.
            rows = [("check", "value", "baseline", "bound", "verdict")] + [
                (
                    check.name,
                    format_value(check.value),
                    "" if check.baseline is None else format_value(check.baseline),
                    check.bound,
                    check.verdict.value,
                )
                for check in measurement.checks
            ]
            widths = [max(len(row[column]) for row in rows) for column in range(5)]
            lines += ["```", *("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows), "```"]
        lines += ["", "recent events:", ""]
        for event in self.events[-8:]:
            who = f" — by {event.by}" if event.by else ""
            lines.append(f"- {event.at.strftime('%H:%M:%S')} {event.message}{who}")
        workflow.set_current_details("\n".join(lines))
        self.reporter.canary_weight(self.weight)

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
        return await self.await_step(step, call, interruptible)

    async def await_step(self, step: str, call: Awaitable[T], interruptible: bool = True) -> T:
        """Await an activity, mapping its failure to StepFailed; `interruptible`: see `interruptible()`.

        Compensation runs its steps with `interruptible=False`: the abort is what it handles.
        """
        if interruptible:
            return await self.interruptible(step, call)
        try:
            return await call
        except ActivityError as error:
            raise _failure_reason(step, error) from None

    async def restore(self, method: Callable[..., Awaitable[T]], arg: Any, summary: str) -> T:
        """A compensating write: not interruptible, retried until it succeeds.

        Errors that retrying cannot fix by itself (a 403 until someone fixes the RBAC, a deleted
        object) are retried too, each recorded, every 30 s doubling to 5 minutes: a run never ends
        with traffic half put back. Someone else's change (ConcurrentEdit) ends it: theirs now.
        """
        wait = timedelta(seconds=30)
        while True:
            try:
                return await workflow.execute_activity_method(method, arg, summary=summary, **RESTORE_CALL)
            except ActivityError as error:
                cause, message = root_cause(error)
                intervention = isinstance(cause, ApplicationError) and cause.type in INTERVENTION_ERRORS
                if not self.restores_outlast_refusals or intervention:
                    raise
                self.record("restoreRetry", f"{summary} failed: {message}; trying again in {format_duration(wait)}")
                await workflow.sleep(wait, summary=f"retry: {summary}")
                wait = min(wait * 2, timedelta(minutes=5))

    async def put_back(self, snapshot: DeploymentSnapshot) -> str | None:
        """Compensation: a Deployment's recorded template, replicas and strategy back, only over
        what this run applied there. Returns why it could not, if it could not."""
        outcome = await self.restore(
            KubernetesActivities.restore_deployment,
            DeploymentRestore(snapshot=snapshot, applied_image=self.spec.image),
            summary=f"restore {snapshot.name} as recorded ({snapshot.image}, {snapshot.replicas} replicas)",
        )
        self.record("restored" if outcome.restored else "notRestored", outcome.message)
        return None if outcome.restored else outcome.message

    def service_spec(self, name: str, selector: dict[str, str]) -> ServiceSpec:
        """A Service of the app that tidegate creates when it is missing (port 80 to the container's)."""
        return ServiceSpec(
            namespace=self.spec.namespace,
            name=name,
            app=self.spec.app,
            selector=selector,
            target_port=self.spec.container_port,
        )

    async def roll_out(self, workload: WorkloadSpec, deadline: timedelta) -> RolloutState:
        """Apply a Deployment and wait until its rollout completes, failing at the deadline."""
        await self.kubernetes(
            f"apply {workload.name}",
            KubernetesActivities.apply_deployment,
            workload,
            summary=f"apply {workload.name} ({workload.image})",
        )
        return await self.wait_for_rollout(workload.namespace, workload.name, deadline)

    async def wait_for_rollout(
        self, namespace: str, name: str, deadline: timedelta, interruptible: bool = True
    ) -> RolloutState:
        """Wait until a Deployment's rollout completes, failing `deadline` from now."""
        wait = RolloutWait(namespace=namespace, name=name, deadline=workflow.now() + deadline)
        state = await self.poll(f"rollout of {name}", KubernetesActivities.wait_for_rollout, wait, "be ready", interruptible)
        self.record("rollout", f"{name} ready: {state.message}")
        return state

    async def poll(
        self, step: str, method: Callable[..., Awaitable[T]], wait: Any, what: str, interruptible: bool = True
    ) -> T:
        """Run an activity that polls Deployment `wait.name` until it does `what`, by `wait.deadline`."""
        deadline = wait.deadline - workflow.now()
        return await self.await_step(
            step,
            workflow.execute_activity_method(
                method,
                wait,
                summary=f"wait for {wait.name} to {what} (deadline {format_duration(deadline)})",
                **polling(deadline),
            ),
            interruptible,
        )

    async def smoke(self, smoke: SmokeTest | None, **placeholders: str) -> SmokeResult | None:
        """The HTTP smoke test: `retries` further attempts, `interval` apart, then a verdict."""
        if smoke is None:
            return None
        url = smoke.url.format(**placeholders)
        check = SmokeCheck(
            url=url,
            expect_status=smoke.expect_status,
            timeout=smoke.timeout,
            namespace=self.spec.namespace,
            headers=smoke.headers,  # secrets by reference: the activity reads them
        )
        result = await self.interruptible(
            "smoke test",
            workflow.execute_activity_method(
                SmokeTester.smoke_test,
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
        """A durable wait for `approve` (or `promote`); `abort` ends it, so does `timeout` (as an abort)."""
        self.approval = None
        self.awaiting_approval = True
        self.timer_ends_at = workflow.now() + timeout if timeout else None
        self.set_phase(Phase.AWAITING_APPROVAL, f"waiting for approval to {what}")
        try:
            await workflow.wait_condition(
                lambda: self.approval is not None or self.promotion is not None or self.interruption is not None,
                timeout=timeout,
                timeout_summary=f"approval to {what}",
            )
        except asyncio.TimeoutError:
            raise StepFailed(
                f"approval to {what} was not given within {format_duration(timeout or timedelta())}",
                Outcome.ABORTED,
            ) from None
        finally:
            self.awaiting_approval = False
            self.timer_ends_at = None
        self.raise_if_interrupted()
        decision = self.approval or self.promotion
        assert decision is not None
        self.record("approved", f"{what} approved", by=decision.by, reason=decision.reason)

    async def hold(self, duration: timedelta, summary: str) -> None:
        """A durable timer that abort/rollback cut short (raising Interrupted), and promote ends."""
        self.timer_ends_at = workflow.now() + duration
        self._show_details()
        try:
            await workflow.wait_condition(
                lambda: self.interruption is not None or self.promotion is not None,
                timeout=duration,
                timeout_summary=summary,
            )
        except asyncio.TimeoutError:
            pass
        finally:
            self.timer_ends_at = None
        self.raise_if_interrupted()

    # -- analysis --------------------------------------------------------------------------

    def variants(self) -> Variants:
        """The version labels a strategy compares; strategies that measure override this."""
        raise NotImplementedError

    def check_history(self, what: str) -> None:
        """Roll back while compensation still fits: a wait that outgrew what one run holds.

        Temporal ends a run at 51,200 history events without running its compensation; a run
        that measures (a wait for approval can be long) rolls back before that, while it can.
        """
        events = workflow.info().get_current_history_length()
        budget = deploy_models.MEASUREMENT_BUDGET * deploy_models.EVENTS_PER_MEASUREMENT
        if self.keeps_within_history and events > budget:
            raise StepFailed(
                f"{what}: this run's history has {events:,} events, near the 51,200 at which Temporal ends a run "
                "(and nothing would put traffic back): rolled back while it could; a longer analysis interval "
                "or an approval timeout keeps a run within its history",
                Outcome.FAILED,
            )

    async def check_traffic(self) -> None:
        """Before each measurement: is traffic still split as this run set it? (Strategies that
        split traffic override this; someone else's change ends the run.)"""

    async def measure(self, check_names: list[str] | None = None) -> Measurement:
        """Run the checks once through Prometheus and judge the result (no limits applied)."""
        analysis = self.spec.analysis
        assert analysis is not None
        checks = [c for c in analysis.checks if check_names is None or c.name in check_names]
        variants = self.variants()
        request = MeasureRequest(prometheus_url=analysis.prometheus.url, queries=queries(checks, variants))
        values = await self.interruptible(
            "analysis",
            workflow.execute_activity(
                "measure",
                request,
                result_type=list[MetricValue],
                summary=f"measure {', '.join(c.name for c in checks)}",
                start_to_close_timeout=request.timeout + timedelta(seconds=5),
                retry_policy=RetryPolicy(maximum_attempts=2),
            ),
        )
        measurement = judge(workflow.now(), checks, variants, values)
        self.last_measurement = measurement
        if measurement.verdict != Verdict.PASS:
            self.record("analysis", f"{measurement.verdict.value}: " + "; ".join(
                c.message for c in measurement.checks if c.verdict != Verdict.PASS
            ))
        else:
            self._show_details()
        return measurement

    def count(self, measurement: Measurement) -> None:
        """Hold a measurement against the limits; a failed analysis rolls back at once."""
        assert self.limits is not None
        failure = self.limits.add(measurement)
        if failure is not None:
            self.failed_measurement = measurement
            raise StepFailed(failure)

    async def observe(self, duration: timedelta | None, what: str, end_on_a_pass: bool = True) -> None:
        """Wait `duration` (None: until approved), measuring every `interval` all the while.

        The seed checks once at the end of a 10-minute window; here a breach is acted on at the
        first measurement after it. `abort` interrupts, `promote` ends the wait. A timed wait
        whose last measurement did not pass measures again until one does (unless the caller
        decides that itself: `end_on_a_pass=False`).
        """
        analysis = self.spec.analysis
        if duration is None:
            self.approval = None
            self.awaiting_approval = True
        end = workflow.now() + duration if duration is not None else None
        self.timer_ends_at = end
        self._show_details()
        passed = 0
        last: Verdict | None = None
        try:
            while True:
                now = workflow.now()
                interval = analysis.interval if analysis else None
                timeout = interval if end is None else (end - now if interval is None else min(interval, end - now))
                try:
                    await workflow.wait_condition(
                        lambda: self.interruption is not None
                        or self.promotion is not None
                        or self.approval is not None,
                        timeout=timeout,
                        timeout_summary=what,
                    )
                except asyncio.TimeoutError:
                    pass
                self.raise_if_interrupted()
                if self.promotion is not None or self.approval is not None:
                    break
                if analysis is not None:
                    self.check_history(what)
                    await self.check_traffic()
                    measurement = await self.measure()
                    self.count(measurement)
                    last = measurement.verdict
                    passed += last == Verdict.PASS
                if end is not None and workflow.now() >= end:
                    break
        finally:
            self.awaiting_approval = False
            self.timer_ends_at = None
        if (
            self.analysis_must_pass
            and end_on_a_pass
            and duration is not None
            and last not in (None, Verdict.PASS)
            and self.promotion is None
        ):
            self.record("analysis", f"{what} ended on {last.value}: measuring again until a measurement passes")
            await self.measure_until_a_pass(None, now=False)
        if analysis is not None:
            last = self.last_measurement
            figures = describe_figures(last.checks if last else [])
            self.record("analysis", f"{what}: {passed} measurement(s) passed" + (f"; last: {figures}" if figures else ""))
        if duration is None:
            decision = self.approval or self.promotion
            assert decision is not None
            self.record("approved", f"{what} approved", by=decision.by, reason=decision.reason)

    async def one_off_analysis(self, check_names: list[str] | None) -> None:
        """Measure until a pass, re-measuring (every interval) within the limits."""
        if await self.measure_until_a_pass(check_names, now=True):
            self.record("analysis", "one-off analysis passed")

    async def measure_until_a_pass(self, check_names: list[str] | None, now: bool) -> bool:
        """Measure (at once if `now`, else an interval from now), then every interval until a
        measurement passes (True) or `promote` ends it (False); the limits end it by failing."""
        analysis = self.spec.analysis
        assert analysis is not None
        while True:
            if not now:
                await self.hold(analysis.interval, "re-measure an inconclusive analysis")
                if self.promotion is not None:
                    return False
            now = False
            measurement = await self.measure(check_names)
            self.count(measurement)
            if measurement.verdict == Verdict.PASS:
                return True

    async def admit(self) -> None:
        """Ask the worker whether it runs this deployment, and who may approve it; a refusal is a
        StepFailed before anything is changed.

        Runs started before workers asked this replay without the question (`workflow.patched`).
        """
        if not self.asks_worker:
            return
        spec = self.spec
        self.admission = await self.await_step(
            "admission",
            workflow.execute_activity_method(
                WorkerPolicy.admit,
                AdmissionRequest(namespace=spec.namespace, app=spec.app),
                summary=f"may this worker deploy to {spec.namespace}, and who approves {spec.app}?",
                **KUBERNETES_CALL,
            ),
        )
        if self.admission.approvers is not None:
            self.record("admitted", f"approvers of {spec.app}: {', '.join(self.admission.approvers)}")
        if self.promotion is not None and not self.may_decide("promote", self.promotion):
            self.promotion = None  # sent before the worker's answer, by someone it does not allow

    async def settle(
        self,
        steps: Callable[[], Awaitable[DeploymentResult]],
        compensate: Callable[[str], Awaitable[str | None]],
    ) -> DeploymentResult:
        """Run a strategy's steps; on a failure, abort/rollback or cancellation, compensate, finish.

        `compensate(reason)` puts back what users had (not interruptible, retried as needed) and
        returns what it could not put back, if anything: that makes the outcome `failed`.
        """
        try:
            await self.admit()
            return await steps()
        except StepFailed as failure:
            outcome, reason, by = failure.outcome, failure.reason, None
        except Interrupted as interruption:
            decision = interruption.decision
            outcome, by = Outcome.ABORTED, decision.by
            reason = f"{interruption.signal} by {decision.by}" + (f": {decision.reason}" if decision.reason else "")
        except asyncio.CancelledError:
            await compensate("the workflow was cancelled")
            await self.finish(Outcome.ABORTED, "the workflow was cancelled")
            raise
        problem = await compensate(reason)
        if problem is not None:
            outcome, reason = Outcome.FAILED, f"{reason}; {problem}"
        return await self.finish(outcome, reason, by=by)

    async def finish(self, outcome: Outcome, reason: str, by: str | None = None) -> DeploymentResult:
        """Record the outcome, show it, and return it once every signal handler is done."""
        if outcome == Outcome.PROMOTED and self.interruption is not None:
            signal, decision = self.interruption
            self.record(
                "tooLate",
                f"{signal} by {decision.by} came when nothing could be undone any more; "
                "`tidegate undo` deploys the previous image again",
                by=decision.by,
                reason=decision.reason,
            )
        self.set_phase(OUTCOME_PHASE[outcome], reason, by=by)
        self.reporter.finished(outcome, reason, self.failed_measurement)
        self.result = DeploymentResult(
            outcome=outcome,
            reason=reason,
            by=by,
            app=self.spec.app,
            namespace=self.spec.namespace,
            image=self.spec.image,
            active_version=self.active_version,
            previous_version=self.previous_version,
            previous_image=self.previous_image,
            failed_measurement=self.failed_measurement,
            downtime=self.downtime,
            started_at=self.started_at,
            finished_at=workflow.now(),
            events=list(self.events),
        )
        await self.reporter.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.result


def describe_downtime(downtime: Downtime) -> str:
    """`3.2s (no pod from 12:00:01 to 12:00:04)`, or `still down since 12:00:01`."""
    since = downtime.started_at.strftime("%H:%M:%S")
    if downtime.ended_at is None or downtime.seconds is None:
        return f"still down since {since}"
    return f"{downtime.seconds:.1f}s (no pod served from {since} to {downtime.ended_at.strftime('%H:%M:%S')})"


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


def workload_spec(spec: DeploymentSpec, version: str, deadline: timedelta, name: str | None = None) -> WorkloadSpec:
    """The Deployment `name` (default `{app}-{version}`) running the spec's image, labelled `version`."""
    return WorkloadSpec(
        namespace=spec.namespace,
        name=name or f"{spec.app}-{version}",
        app=spec.app,
        version=version,
        image=spec.image,
        replicas=spec.replicas,
        container_port=spec.container_port,
        progress_deadline_seconds=max(1, int(deadline.total_seconds())),
    )


def deployment_ref(spec: DeploymentSpec, version: str) -> ObjectRef:
    return ObjectRef(namespace=spec.namespace, name=f"{spec.app}-{version}")


def smoke_plan(smoke: SmokeTest | None, setting: str) -> str:
    """The smoke test step of a plan, for `starter.py plan`."""
    if smoke is None:
        return f"no smoke test ({setting} is not set)"
    return (
        f"smoke test GET {smoke.url} expecting {smoke.expect_status} "
        f"(timeout {format_duration(smoke.timeout)}, {smoke.retries} retries {format_duration(smoke.interval)} apart)"
    )


def pause_plan(pause: Pause, when: str) -> str:
    """A `pause` step of a plan: a durable timer, or a wait for approval."""
    if pause.duration is None:
        return f"pause {when} until an approve signal (abort puts everything back)"
    return f"pause {format_duration(pause.duration)} {when} (durable timer; abort puts everything back, promote ends it)"
