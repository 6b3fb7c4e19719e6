"""Recreate: every old pod goes, then the new version starts; the downtime between is measured.

The seed's cheapest, riskiest strategy. The app's own Deployment is scaled to 0 and the run waits
until no pod is left, then it gets the new image with its previous replicas and the run waits for
the first ready pod (the downtime ends there) and for the whole rollout; then the smoke test, the
analysis window and the optional pause. A failure brings the old version back (the recorded pod
template and replicas) and waits until it is ready again.

The downtime is measured from the cluster: `wait_for_pods` reports when a poll first saw no pod
left, and when a poll first saw a ready pod; the workflow only subtracts and reports them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

from workflows.common import describe_downtime
from workflows.in_place import InPlaceWorkflow, deployment_name, in_place_plan

with workflow.unsafe.imports_passed_through():
    from deploy_models import (
        DeploymentInput,
        DeploymentResult,
        DeploymentSpec,
        DeploymentUpdate,
        Downtime,
        Outcome,
        Phase,
        format_duration,
    )
    from activities.kubernetes import KubernetesActivities


@workflow.defn(name="RecreateDeployment")
class RecreateWorkflow(InPlaceWorkflow):
    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        return await self.settle(self._steps, self.undo)

    async def _steps(self) -> DeploymentResult:
        spec, settings = self.spec, self.spec.recreate
        deadline = settings.progress_deadline
        snapshot = await self.record_deployment()
        if snapshot is None:
            await self.first_deployment()
            await self.verify()
            return await self.finish(Outcome.PROMOTED, self.finished() + " (first deployment: nothing served before)")

        self.set_phase(Phase.SCALING_DOWN, f"scaling {self.name} ({snapshot.image}) from {snapshot.replicas} to 0")
        self.changed = True  # from here on, compensation brings the old version back
        await self.kubernetes(
            "scale down",
            KubernetesActivities.update_deployment,
            DeploymentUpdate(snapshot=snapshot, replicas=0),
            summary=f"scale {self.name} to 0",
        )
        gone = await self.wait_for_pods("gone", deadline)
        self._downtime_began(gone.at)

        replicas = snapshot.replicas or spec.replicas  # (a Deployment that was scaled to 0 gets the spec's)
        self.set_phase(Phase.ROLLING_OUT, f"starting {replicas} pod(s) of {spec.image}")
        await self.kubernetes(
            "start the new version",
            KubernetesActivities.update_deployment,
            DeploymentUpdate(snapshot=snapshot, image=spec.image, replicas=replicas),
            summary=f"set {self.name}'s {snapshot.container} image to {spec.image}, {replicas} replicas",
        )
        end = workflow.now() + deadline
        first = await self.wait_for_pods("firstReady", deadline)
        self._downtime_ended(first.at)
        await self.wait_for_rollout(spec.namespace, self.name, max(end - workflow.now(), timedelta(seconds=1)))
        await self.verify()
        return await self.finish(Outcome.PROMOTED, f"{self.finished()}; downtime {describe_downtime(self.downtime)}")

    def _downtime_began(self, at: datetime) -> None:
        self.downtime = Downtime(started_at=at)
        self.record("downtimeBegan", f"no pod of {self.name} left: nothing serves from {at.isoformat(timespec='seconds')}")

    def _downtime_ended(self, at: datetime) -> None:
        assert self.downtime is not None
        seconds = (at - self.downtime.started_at).total_seconds()
        self.downtime = self.downtime.model_copy(update={"ended_at": at, "seconds": seconds})
        self.record("downtimeEnded", f"a pod of {self.name} is ready: downtime {describe_downtime(self.downtime)}")

    async def wait_until_restored(self) -> None:
        """The old version back: its first pod ends the downtime if the new one never served."""
        assert self.snapshot is not None
        if self.downtime is not None and self.downtime.ended_at is None and self.snapshot.replicas > 0:
            first = await self.wait_for_pods("firstReady", self.settings.progress_deadline, interruptible=False)
            self._downtime_ended(first.at)
        await super().wait_until_restored()


def plan(spec: DeploymentSpec) -> list[str]:
    """The steps a recreate of `spec` takes, for `starter.py plan`."""
    settings = spec.recreate
    name = deployment_name(spec)
    deadline = format_duration(settings.progress_deadline)
    return [
        f"record Deployment {name} as it is: pod template, replicas "
        f"(missing: create it with {spec.replicas} replicas, a first deployment, no downtime)",
        f"scale {name} to 0 and wait until no pod is left (deadline {deadline}): the downtime begins",
        f"set its image to {spec.image} with the recorded replicas (if 0: {spec.replicas}); wait for the first ready pod "
        f"(the downtime ends: measured and reported) and the whole rollout (progress deadline {deadline})",
        *in_place_plan(spec, settings),
        "on a failure, abort or cancellation: the old version back (recorded image and replicas), "
        "waiting until it is ready again",
    ]
