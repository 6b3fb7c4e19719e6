"""Rolling update with automatic undo.

The app's own Deployment gets the new image (and `maxSurge` / `maxUnavailable`); Kubernetes
replaces the pods a few at a time while the old ones keep serving. The rollout must complete
within the progress deadline: pods that never become ready, crash-loop, or whose image cannot be
pulled all keep it from completing, and it ends there. Then the smoke test, the analysis window
and the optional pause. Any failure, abort or cancellation puts the recorded pod template (and
strategy) back, and the run waits until that rollback is itself complete.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from workflows.in_place import InPlaceWorkflow, deployment_name, in_place_plan

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities
    from deploy_models import DeploymentInput, DeploymentResult, DeploymentSpec, DeploymentUpdate, Outcome, Phase, format_duration


def strategy_text(spec: DeploymentSpec, current: dict[str, Any] | None = None) -> str:
    """The rollout's maxSurge and maxUnavailable, given the Deployment's own strategy `current`
    (None, for a plan: what the spec leaves unset is the Deployment's own)."""
    settings = spec.rolling
    if current is None:
        surge, unavailable, fallback = settings.max_surge, settings.max_unavailable, "the Deployment's own"
    else:
        rolling = (settings.deployment_strategy(current) or current).get("rollingUpdate", {})
        surge, unavailable, fallback = rolling.get("maxSurge"), rolling.get("maxUnavailable"), "25%"
    return f"maxSurge {fallback if surge is None else surge}, maxUnavailable {fallback if unavailable is None else unavailable}"


@workflow.defn(name="RollingDeployment")
class RollingWorkflow(InPlaceWorkflow):
    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        return await self.settle(self._steps, self.undo)

    async def _steps(self) -> DeploymentResult:
        spec, settings = self.spec, self.spec.rolling
        snapshot = await self.record_deployment()
        if snapshot is None:
            await self.first_deployment()
        else:
            self.set_phase(
                Phase.ROLLING_OUT,
                f"rolling {self.name} from {snapshot.image} to {spec.image} ({strategy_text(spec, snapshot.strategy or {})})",
            )
            self.changed = True  # from here on, compensation restores the recorded template
            await self.kubernetes(
                "update Deployment",
                KubernetesActivities.update_deployment,
                DeploymentUpdate(snapshot=snapshot, image=spec.image, strategy=settings.deployment_strategy(snapshot.strategy)),
                summary=f"set {self.name}'s {snapshot.container} image to {spec.image}",
            )
            await self.wait_for_rollout(spec.namespace, self.name, settings.progress_deadline)
        await self.verify()
        return await self.finish(Outcome.PROMOTED, self.finished(), by=self.promotion.by if self.promotion else None)


def plan(spec: DeploymentSpec) -> list[str]:
    """The steps a rolling update of `spec` takes, for `starter.py plan`."""
    settings = spec.rolling
    name = deployment_name(spec)
    container = settings.container or "its only container (or the one named like the app)"
    return [
        f"record Deployment {name} as it is: pod template, replicas, strategy "
        f"(missing: create it with {spec.replicas} replicas, a first deployment)",
        f"set the image of {container} to {spec.image}, strategy RollingUpdate with {strategy_text(spec)} "
        "(Kubernetes' 25% if the Deployment has none; one guarded patch; replicas unchanged)",
        f"wait until the rollout is complete (progress deadline {format_duration(settings.progress_deadline)}: "
        "pods never ready, crash-looping or not pulled end it)",
        *in_place_plan(spec, settings),
        "on a failure, abort or cancellation: put the recorded pod template and strategy back and wait "
        "until that rollback is complete",
    ]
