"""Blue/green: the seed's flow, made durable, observable and interruptible.

Two Deployments `{app}-blue` and `{app}-green`; one Service whose `version` selector decides
which colour gets all the traffic. The new colour is rolled out and smoke tested while the old
one keeps serving; the switch is one selector patch; the old colour is kept for `scaleDownDelay`
(a durable timer) so that `rollback` is instant, then deleted. With `analysis`, the new colour
is measured all through that window, and a failed analysis switches back at once.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

from workflows.analysis import Variants
from workflows.common import (
    DeploymentWorkflow,
    Interrupted,
    StepFailed,
    deployment_ref,
    switch_spec,
    workload_spec,
)

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities
    from deploy_models import (
        DeploymentInput,
        DeploymentResult,
        DeploymentSpec,
        Outcome,
        Phase,
        ServiceRef,
        format_duration,
    )

COLOURS = ("blue", "green")


def other_colour(colour: str | None) -> str:
    """The colour to deploy next: the one not serving (blue on a first deployment)."""
    return "green" if colour == "blue" else "blue"


@workflow.defn(name="BlueGreenDeployment")
class BlueGreenWorkflow(DeploymentWorkflow):
    @workflow.init
    def __init__(self, deployment: DeploymentInput) -> None:
        self._begin(deployment)
        self.switched = False
        # Runs started before this change ignored `analysis`: they keep the old colour untimed.
        self.analyses_after_switch = self.spec.analysis is not None and workflow.patched("blue-green-analysis")
        # Without a preview Service, the smoke test reaches the new colour through `{app}-{colour}`
        # (runs started before this change assumed such a Service existed).
        settings = self.spec.blue_green
        self.serves_new_colour = (
            settings.preview_service is None
            and settings.smoke_test is not None
            and workflow.patched("blue-green-colour-service")
        )

    def variants(self) -> Variants:
        """The new colour's pods against the previous colour's (labelled `version: blue|green`)."""
        return Variants(
            app=self.spec.app,
            namespace=self.spec.namespace,
            canary=self.new_version or "",
            stable=self.previous_version or "",
        )

    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        spec = self.spec
        settings = spec.blue_green
        service = spec.active_service
        try:
            await self.admit()
            current = await self.kubernetes(
                "read active colour",
                KubernetesActivities.read_service_version,
                ServiceRef(namespace=spec.namespace, name=service),
                summary=f"read the colour Service {service} selects",
            )
            if current is not None and current not in COLOURS:
                raise StepFailed(
                    f"Service {service} selects version={current!r}, which is not blue or green",
                    Outcome.FAILED,
                )
            self.active_version = current
            self.previous_version = current
            self.new_version = other_colour(current)
            new = self.new_version

            self.set_phase(Phase.ROLLING_OUT, f"rolling out {spec.app}-{new} with {spec.image}")
            await self.roll_out(workload_spec(spec, new, settings.progress_deadline), settings.progress_deadline)
            if settings.preview_service:
                await self.kubernetes(
                    "point preview",
                    KubernetesActivities.switch_service,
                    switch_spec(spec, settings.preview_service, None, new).model_copy(
                        update={"any_current": True}
                    ),
                    summary=f"point preview Service {settings.preview_service} at {new}",
                )

            if self.serves_new_colour:
                await self.kubernetes(
                    "ensure colour Service",
                    KubernetesActivities.ensure_service,
                    self.service_spec(f"{spec.app}-{new}", {"app": spec.app, "version": new}),
                    summary=f"ensure Service {spec.app}-{new} for the smoke test",
                )
            self.set_phase(Phase.SMOKE_TESTING, f"smoke testing {new}")
            await self.smoke(
                settings.smoke_test,
                app=spec.app,
                namespace=spec.namespace,
                colour=new,
                service=settings.preview_service or f"{spec.app}-{new}",
            )

            if settings.approval is not None:
                await self.await_approval(settings.approval.timeout, f"switch {service} to {new}")

            self.raise_if_interrupted()
            self.set_phase(Phase.SWITCHING, f"switching Service {service} from {current or '(none)'} to {new}")
            self.switched = True  # from here on, compensation switches back (idempotently)
            await self.kubernetes(
                "switch traffic",
                KubernetesActivities.switch_service,
                switch_spec(spec, service, current, new),
                summary=f"switch Service {service} to {new}",
                interruptible=False,
            )
            self.active_version = new
            self.record("switched", f"Service {service} now sends all traffic to {new}")

            if current is not None:
                delay = settings.scale_down_delay
                self.set_phase(
                    Phase.KEEPING_PREVIOUS,
                    f"keeping {spec.app}-{current} for {format_duration(delay)} for instant rollback",
                )
                if self.analyses_after_switch:
                    await self.observe(delay, f"analysis of {new} while {current} is kept")
                else:
                    await self.hold(delay, f"keep {current} for rollback")
                self.set_phase(Phase.CLEANING_UP, f"deleting {spec.app}-{current}")
                await self.restore(
                    KubernetesActivities.delete_deployment,
                    deployment_ref(spec, current),
                    summary=f"delete {spec.app}-{current}",
                )
            return await self.finish(Outcome.PROMOTED, f"{spec.app} serves {spec.image} from {new}")
        except StepFailed as failure:
            await self._compensate(failure.reason)
            return await self.finish(failure.outcome, failure.reason)
        except Interrupted as interruption:
            decision = interruption.decision
            reason = f"{interruption.signal} by {decision.by}" + (
                f": {decision.reason}" if decision.reason else ""
            )
            outcome = Outcome.ROLLED_BACK if self.switched else Outcome.ABORTED
            await self._compensate(reason)
            return await self.finish(outcome, reason, by=decision.by)
        except asyncio.CancelledError:
            await self._compensate("the workflow was cancelled")
            await self.finish(Outcome.ABORTED, "the workflow was cancelled")
            raise

    async def _compensate(self, reason: str) -> None:
        """Traffic back to the colour that served before, then remove the new colour."""
        spec = self.spec
        new = self.new_version
        if new is None:
            return
        self.set_phase(Phase.ROLLING_BACK, reason)
        if self.switched and self.previous_version is not None:
            await self.restore(
                KubernetesActivities.switch_service,
                switch_spec(spec, spec.active_service, new, self.previous_version),
                summary=f"switch Service {spec.active_service} back to {self.previous_version}",
            )
            self.active_version = self.previous_version
            self.switched = False
            self.record("switchedBack", f"Service {spec.active_service} sends all traffic to {self.previous_version}")
        if self.active_version != new:
            await self.restore(
                KubernetesActivities.delete_deployment,
                deployment_ref(spec, new),
                summary=f"delete {spec.app}-{new}",
            )
            self.record("removed", f"deleted {spec.app}-{new}")


def plan(spec: DeploymentSpec) -> list[str]:
    """The steps a blue/green run of `spec` takes, for `starter.py plan`."""
    settings = spec.blue_green
    service = spec.active_service
    steps = [
        f"read which colour Service {service} selects (version=blue|green; none yet: deploy blue)",
        f"apply Deployment {spec.app}-<new colour> with {spec.image} "
        f"({spec.replicas} replicas, port {spec.container_port})",
        f"wait until its rollout is complete (progress deadline {format_duration(settings.progress_deadline)})",
    ]
    if settings.preview_service:
        steps.append(f"point preview Service {settings.preview_service} at the new colour")
    smoke = settings.smoke_test
    if smoke:
        steps.append(
            f"smoke test GET {smoke.url} expecting {smoke.expect_status} "
            f"(timeout {format_duration(smoke.timeout)}, {smoke.retries} retries "
            f"{format_duration(smoke.interval)} apart)"
        )
    else:
        steps.append("no smoke test (strategy.blueGreen.smokeTest is not set)")
    if settings.approval is not None:
        timeout = settings.approval.timeout
        steps.append(
            "wait for an approve signal"
            + (f" (aborts after {format_duration(timeout)})" if timeout else " (no time limit)")
        )
    analysis = spec.analysis
    watching = (
        f"; analysis every {format_duration(analysis.interval)}: {', '.join(c.name for c in analysis.checks)}, "
        "a failed analysis switches back"
        if analysis
        else ""
    )
    steps += [
        f"switch Service {service} to the new colour (all traffic at once)",
        f"keep the old colour for {format_duration(settings.scale_down_delay)} (durable timer{watching}; "
        "rollback or abort switches back at once)",
        "delete the old colour's Deployment",
    ]
    return steps
