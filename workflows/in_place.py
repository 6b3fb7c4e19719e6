"""What rolling update and recreate share: the app's own Deployment, changed in place.

Before its first write a run records the Deployment as it is (pod template, replicas, strategy:
`read_deployment`); every failure, abort or cancellation puts exactly that record back
(`restore_deployment`, only over what tidegate itself left there) and waits until the restored
version is ready again. A Deployment that does not exist yet is created (a first deployment,
`spec.replicas` pods, labelled `app` and `version: stable`), and deleted if that run fails.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from temporalio import workflow

from workflows.analysis import Variants
from workflows.common import DeploymentWorkflow, StepFailed, pause_plan, smoke_plan, workload_spec

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities
    from deploy_models import (
        DeploymentInput,
        DeploymentSnapshot,
        DeploymentSpec,
        DeploymentTarget,
        InPlaceSettings,
        ObjectRef,
        Phase,
        PodsObserved,
        PodsWait,
        format_duration,
    )

# The `version` label of a Deployment tidegate creates itself (a selector never changes, so the
# label cannot follow the image).
FIRST_VERSION = "stable"


def deployment_name(spec: DeploymentSpec) -> str:
    return spec.in_place.deployment or spec.app


class InPlaceWorkflow(DeploymentWorkflow):
    """State and steps of a run that changes one Deployment in place."""

    settings: InPlaceSettings
    target: DeploymentTarget
    snapshot: DeploymentSnapshot | None
    created: bool  # a first deployment: tidegate created the Deployment
    changed: bool  # a write was (perhaps) made: compensation puts the record back

    @workflow.init
    def __init__(self, deployment: DeploymentInput) -> None:
        self._begin(deployment)
        spec = self.spec
        self.settings = spec.in_place
        self.target = DeploymentTarget(
            namespace=spec.namespace, name=deployment_name(spec), app=spec.app, container=self.settings.container
        )
        self.snapshot = None
        self.created = False
        self.changed = False
        self.new_version = spec.image

    @property
    def name(self) -> str:
        return self.target.name

    def variants(self) -> Variants:
        """One version runs at a time: the queries' `{{version}}` is its pod template's label."""
        version = (self.snapshot.version if self.snapshot else FIRST_VERSION) or ""
        return Variants(app=self.spec.app, namespace=self.spec.namespace, canary=version, stable=version)

    async def record_deployment(self) -> DeploymentSnapshot | None:
        """Read the Deployment as it is before any change (None: it does not exist yet)."""
        self.snapshot = snapshot = await self.kubernetes(
            "read Deployment",
            KubernetesActivities.read_deployment,
            self.target,
            summary=f"record Deployment {self.name} before changing it",
        )
        if snapshot is not None:
            self.previous_image = snapshot.image
            self.active_version = snapshot.image
            self.record(
                "recorded",
                f"Deployment {self.name}: container {snapshot.container} runs {snapshot.image}, "
                f"{snapshot.replicas} replicas (resourceVersion {snapshot.resource_version})",
            )
        return snapshot

    async def first_deployment(self) -> None:
        """No Deployment yet: create it (and the app's Service, if missing) and wait until ready."""
        spec = self.spec
        deadline = self.settings.progress_deadline
        self.set_phase(Phase.ROLLING_OUT, f"first deployment: creating Deployment {self.name} with {spec.image}")
        self.created = self.changed = True
        await self.roll_out(workload_spec(spec, FIRST_VERSION, deadline, name=self.name), deadline)
        await self.kubernetes(
            "ensure Service",
            KubernetesActivities.ensure_service,
            self.service_spec(spec.app, {"app": spec.app}),
            summary=f"ensure Service {spec.app}",
        )

    async def wait_for_pods(
        self, until: Literal["gone", "firstReady"], deadline: timedelta, interruptible: bool = True
    ) -> PodsObserved:
        """Wait until the Deployment's pods are all gone, or its first new pod is ready."""
        what = "have no pod left" if until == "gone" else "have a first ready pod"
        wait = PodsWait(namespace=self.target.namespace, name=self.name, until=until, deadline=workflow.now() + deadline)
        step = f"scale-down of {self.name}" if until == "gone" else f"rollout of {self.name}"
        observed = await self.poll(step, KubernetesActivities.wait_for_pods, wait, what, interruptible)
        self.record("pods", f"{self.name}: {observed.message} at {observed.at.isoformat(timespec='seconds')}")
        return observed

    async def verify(self) -> None:
        """Smoke test, analysis for the window (if the spec has analysis), the optional pause."""
        spec, settings = self.spec, self.settings
        if settings.smoke_test is not None:
            self.set_phase(Phase.SMOKE_TESTING, f"smoke testing {self.name}")
            await self.smoke(
                settings.smoke_test,
                app=spec.app,
                namespace=spec.namespace,
                colour=self.variants().canary,
                service=spec.app,
            )
        if spec.analysis is not None and self.promotion is None:
            window = settings.analysis_window
            self.set_phase(Phase.ANALYSING, f"analysing {spec.image} for {format_duration(window)}")
            await self.observe(window, "analysis after the rollout")
        pause = settings.pause
        if pause is not None and self.promotion is None:
            if pause.duration is None:
                self.set_phase(Phase.AWAITING_APPROVAL, f"{spec.image} is out: waiting for approval to finish")
            else:
                self.set_phase(Phase.OBSERVING, f"pausing {format_duration(pause.duration)} before finishing")
            await self.observe(pause.duration, "pause before finishing")
        self.active_version, self.previous_version = spec.image, self.previous_image

    def finished(self) -> str:
        """The reason of a successful run."""
        reason = f"Deployment {self.name} runs {self.spec.image}"
        if self.promotion is not None:
            reason += f" (finished early by {self.promotion.by})"
        return reason

    async def undo(self, reason: str) -> str | None:
        """Compensation: the recorded Deployment back, ready again (or a first one deleted).

        Returns what could not be put back, if anything.
        """
        if not self.changed:
            return None
        self.set_phase(Phase.ROLLING_BACK, reason)
        if self.created:
            await self.restore(
                KubernetesActivities.delete_deployment,
                ObjectRef(namespace=self.target.namespace, name=self.name),
                summary=f"delete {self.name} (the first deployment failed)",
            )
            self.record("removed", f"deleted Deployment {self.name}: nothing ran before this first deployment")
            return None
        assert self.snapshot is not None
        problem = await self.put_back(self.snapshot)
        if problem is not None:
            return problem
        try:
            await self.wait_until_restored()
        except StepFailed as failure:
            return f"the restored version did not become ready again: {failure.reason}"
        self.active_version = self.snapshot.image
        self.record("rolledBack", f"Deployment {self.name} runs {self.snapshot.image} again, ready")
        return None

    async def wait_until_restored(self) -> None:
        """Wait until the restored version's rollout is complete (not interruptible)."""
        await self.wait_for_rollout(self.target.namespace, self.name, self.settings.progress_deadline, interruptible=False)


def in_place_plan(spec: DeploymentSpec, settings: InPlaceSettings) -> list[str]:
    """The steps after the rollout, and what a failure does, for `starter.py plan`."""
    steps = [smoke_plan(settings.smoke_test, f"strategy.{spec.strategy.type}.smokeTest")]
    analysis = spec.analysis
    if analysis is not None:
        steps.append(
            f"analyse for {format_duration(settings.analysis_window)}, every {format_duration(analysis.interval)}: "
            + ", ".join(check.name for check in analysis.checks)
        )
    if settings.pause is not None:
        steps.append(pause_plan(settings.pause, "before finishing"))
    return steps
