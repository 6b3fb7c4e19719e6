"""Canary: Istio weights moved step by step, watched by Prometheus the whole time.

Primary/canary model (as Flagger): `{app}-stable` serves, `{app}-canary` gets the new image and
must be ready and pass the smoke test before it receives any traffic. Steps in Argo Rollouts'
vocabulary move the VirtualService weight; during every pause the analysis measures each
`interval` and a breach rolls back at once (weight 0, canary scaled to 0), rather than at the end
of the seed's 10-minute window. Promotion gives the stable Deployment the new image, then sends
all traffic back to it and scales the canary to 0.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.analysis import Variants
from workflows.common import DeploymentWorkflow, StepFailed, workload_spec

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities
    from deploy_models import (
        MEASUREMENT_BUDGET,
        CanaryStep,
        DeploymentInput,
        DeploymentResult,
        DeploymentSnapshot,
        DeploymentSpec,
        DeploymentTarget,
        IstioTarget,
        ObjectRef,
        Outcome,
        Phase,
        ScaleRequest,
        WeightChange,
        WorkloadSpec,
        format_duration,
    )


def istio_target(spec: DeploymentSpec) -> IstioTarget:
    istio = spec.istio
    return IstioTarget(
        namespace=spec.namespace,
        app=spec.app,
        host=spec.app,
        virtual_service=istio.virtual_service.name,
        route=istio.virtual_service.route,
        destination_rule=istio.destination_rule.name,
        stable_subset=istio.destination_rule.stable_subset_name,
        canary_subset=istio.destination_rule.canary_subset_name,
    )


@workflow.defn(name="CanaryDeployment")
class CanaryWorkflow(DeploymentWorkflow):
    @workflow.init
    def __init__(self, deployment: DeploymentInput) -> None:
        self._begin(deployment)
        self.target = istio_target(self.spec)
        self.stable_name = f"{self.spec.app}-stable"
        self.canary_name = f"{self.spec.app}-canary"
        self.canary_started = False
        # Runs started before this change promoted without recording stable first.
        self.restores_stable = workflow.patched("restore-stable-after-failed-promotion")
        self.stable_snapshot: DeploymentSnapshot | None = None  # stable as it was before promotion
        # Runs started before this change checked the weight at each step only.
        self.checks_weight_at_measurements = workflow.patched("check-weight-at-measurements")

    def variants(self) -> Variants:
        return Variants(
            app=self.spec.app,
            namespace=self.spec.namespace,
            canary=self.target.canary_subset,
            stable=self.target.stable_subset,
        )

    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        return await self.settle(self._steps, self._roll_back)

    async def _steps(self) -> DeploymentResult:
        spec = self.spec
        settings = spec.canary
        if not await self._deploy_canary():
            return await self._first_deployment()

        for index, step in enumerate(settings.steps):
            if self.promotion is not None:
                self.record("promote", f"skipping steps {index}..{len(settings.steps) - 1}")
                break
            self.step = index
            await self._run_step(index, step)

        await self._promote()
        reason = f"{spec.app} serves {spec.image} from {self.stable_name}"
        if self.promotion is not None:
            reason += f" (promoted early by {self.promotion.by})"
        return await self.finish(Outcome.PROMOTED, reason, by=self.promotion.by if self.promotion else None)

    async def _run_step(self, index: int, step: CanaryStep) -> None:
        label = f"step {index}"
        if step.set_weight is not None:
            self.set_phase(Phase.SHIFTING_TRAFFIC, f"{label}: setWeight {step.set_weight}")
            await self._set_weight(step.set_weight, expected=self.weight)
        elif step.pause is not None:
            duration = step.pause.duration
            if duration is None:
                self.set_phase(Phase.AWAITING_APPROVAL, f"{label}: paused at {self.weight}% until approved")
            else:
                self.set_phase(Phase.OBSERVING, f"{label}: observing {self.weight}% for {format_duration(duration)}")
            await self.observe(duration, f"{label} pause at {self.weight}%")
        elif step.analysis is not None:
            self.set_phase(Phase.ANALYSING, f"{label}: one-off analysis at {self.weight}%")
            await self.one_off_analysis(step.analysis.checks)

    async def _deploy_canary(self) -> bool:
        """Routing at 0%, then `{app}-canary` rolled out and smoke tested: ready for traffic.

        False (nothing done) when there is no stable version yet: a first deployment.
        """
        spec = self.spec
        self.previous_image = await self.kubernetes(
            "read stable image",
            KubernetesActivities.read_deployment_image,
            ObjectRef(namespace=spec.namespace, name=self.stable_name),
            summary=f"read the image {self.stable_name} runs",
        )
        self.active_version = self.target.stable_subset
        self.new_version = self.target.canary_subset
        await self.kubernetes(
            "ensure Service",
            KubernetesActivities.ensure_service,
            self.service_spec(spec.app, {"app": spec.app}),
            summary=f"ensure Service {spec.app} (both subsets)",
        )
        if self.previous_image is None:
            return False

        await self._ensure_routing_at_zero()

        self.set_phase(Phase.ROLLING_OUT, f"rolling out {self.canary_name} with {spec.image}")
        self.canary_started = True
        await self.roll_out(self._workload(self.target.canary_subset, self.canary_name), spec.routed.progress_deadline)
        canary_service = f"{spec.app}-canary"
        await self.kubernetes(
            "ensure canary Service",
            KubernetesActivities.ensure_service,
            self.service_spec(canary_service, {"app": spec.app, "version": self.target.canary_subset}),
            summary=f"ensure Service {canary_service} for smoke tests",
        )
        self.set_phase(Phase.SMOKE_TESTING, f"smoke testing {self.canary_name}")
        await self.smoke(
            spec.routed.smoke_test,
            app=spec.app,
            namespace=spec.namespace,
            colour=self.target.canary_subset,
            service=canary_service,
        )
        return True

    async def _withdraw_routes(self) -> None:
        """Before the canary leaves: routes that only it serves go (none here; A/B has one)."""

    async def _ensure_routing_at_zero(self) -> None:
        """The DestinationRule and VirtualService exist, with all traffic on stable."""
        self.weight = await self.kubernetes(
            "ensure routing",
            KubernetesActivities.ensure_routing,
            self.target,
            summary=f"ensure VirtualService {self.target.virtual_service} and DestinationRule",
        )
        if self.weight != 0:
            self.record("routing", f"found {self.weight}% on {self.target.canary_subset}; resetting to 0")
            await self._set_weight(0, expected=None)

    async def check_traffic(self) -> None:
        """A hand edit of the weights is caught at the next measurement, not only at the next
        step: the same guarded call with the weight unchanged reads and compares, writes nothing."""
        if self.checks_weight_at_measurements and self.weight is not None:
            await self.kubernetes(
                "check weight",
                KubernetesActivities.set_canary_weight,
                WeightChange(target=self.target, weight=self.weight, expected=self.weight),
                summary=f"check canary weight is still {self.weight}%",
            )

    async def _set_weight(self, weight: int, expected: int | None) -> None:
        """Move the weight; a weight someone else changed ends the run (and rolls back)."""
        self.weight = await self.kubernetes(
            f"setWeight {weight}",
            KubernetesActivities.set_canary_weight,
            WeightChange(target=self.target, weight=weight, expected=expected),
            summary=f"canary weight {weight}%",
            interruptible=False,
        )
        self.record("weight", f"{self.target.canary_subset} {weight}%, {self.target.stable_subset} {100 - weight}%")

    async def _promote(self) -> None:
        """Stable gets the new image (recorded first, so a failure or an abort puts it back),
        then all traffic and the canary goes."""
        spec = self.spec
        self.set_phase(Phase.PROMOTING, f"giving {self.stable_name} the new image {spec.image}")
        if self.restores_stable:
            self.stable_snapshot = await self.kubernetes(
                "record stable",
                KubernetesActivities.read_deployment,
                DeploymentTarget(namespace=spec.namespace, name=self.stable_name, app=spec.app),
                summary=f"record Deployment {self.stable_name} before promotion",
            )
        await self.roll_out(self._workload(self.target.stable_subset, self.stable_name), spec.routed.progress_deadline)
        await self._withdraw_routes()
        await self._set_weight(0, expected=None)
        await self.restore(
            KubernetesActivities.scale_deployment,
            ScaleRequest(namespace=spec.namespace, name=self.canary_name, replicas=0),
            summary=f"scale {self.canary_name} to 0",
        )

    async def _first_deployment(self) -> DeploymentResult:
        """No stable version to compare with: deploy it directly, with all traffic (as Flagger)."""
        spec = self.spec
        self.set_phase(Phase.ROLLING_OUT, f"first deployment: rolling out {self.stable_name} with {spec.image}")
        await self.roll_out(self._workload(self.target.stable_subset, self.stable_name), spec.routed.progress_deadline)
        await self._ensure_routing_at_zero()
        return await self.finish(
            Outcome.PROMOTED, f"first deployment: {spec.app} serves {spec.image} (no stable version to compare with)"
        )

    async def _roll_back(self, reason: str) -> str | None:
        """All traffic to stable (verified by reading back) as it was before the run, canary
        scaled to 0; retried until done. Returns what could not be put back, if anything."""
        if not self.canary_started:
            return None
        spec = self.spec
        self.set_phase(Phase.ROLLING_BACK, reason)
        await self._withdraw_routes()
        problem = None
        if self.stable_snapshot is not None:  # promotion had begun: stable's old template back first
            problem = await self.put_back(self.stable_snapshot)
        await self.restore(
            KubernetesActivities.set_canary_weight,
            WeightChange(target=self.target, weight=0),
            summary="canary weight 0%",
        )
        self.weight = 0
        self.record("weight", f"{self.target.canary_subset} 0%, {self.target.stable_subset} 100%")
        await self.restore(
            KubernetesActivities.scale_deployment,
            ScaleRequest(namespace=spec.namespace, name=self.canary_name, replicas=0),
            summary=f"scale {self.canary_name} to 0",
        )
        if self.stable_snapshot is not None and problem is None:
            try:
                await self.wait_for_rollout(spec.namespace, self.stable_name, spec.routed.progress_deadline, interruptible=False)
            except StepFailed as failure:
                problem = f"{self.stable_name} did not become ready again with {self.stable_snapshot.image}: {failure.reason}"
        self.record("rolledBack", f"{self.canary_name} scaled to 0; all traffic on {self.stable_name}")
        return problem

    def _workload(self, version: str, name: str) -> WorkloadSpec:
        return workload_spec(self.spec, version, self.spec.routed.progress_deadline, name)



def plan(spec: DeploymentSpec) -> list[str]:
    """The steps a canary run of `spec` takes, for `starter.py plan`."""
    settings = spec.canary
    target = istio_target(spec)
    steps = [
        f"read the image {spec.app}-stable runs (none: a first deployment, straight to stable)",
        f"ensure DestinationRule {target.destination_rule} (subsets {target.stable_subset}, {target.canary_subset}) "
        f"and VirtualService {target.virtual_service}",
        f"apply Deployment {spec.app}-canary with {spec.image}; wait until ready "
        f"(progress deadline {format_duration(settings.progress_deadline)})",
    ]
    if settings.smoke_test:
        steps.append(f"smoke test GET {settings.smoke_test.url} expecting {settings.smoke_test.expect_status}")
    analysis = spec.analysis
    watching = (
        f"; analysis every {format_duration(analysis.interval)}: "
        + ", ".join(c.name for c in analysis.checks)
        if analysis
        else "; no analysis (set `analysis` to watch metrics)"
    )
    for index, step in enumerate(settings.steps):
        if step.set_weight is not None:
            steps.append(f"step {index}: setWeight {step.set_weight} ({target.stable_subset} {100 - step.set_weight}%)")
        elif step.pause is not None and step.pause.duration is not None:
            steps.append(f"step {index}: pause {format_duration(step.pause.duration)} (durable timer{watching})")
        elif step.pause is not None:
            limit = (
                f"; rolled back if still waiting after about {format_duration(MEASUREMENT_BUDGET * analysis.interval)}, "
                "all one run's history holds"
                if analysis
                else ""
            )
            steps.append(f"step {index}: pause until an approve signal{watching}{limit}")
        elif step.analysis is not None:
            steps.append(f"step {index}: one-off analysis of {', '.join(step.analysis.checks or ['all checks'])}")
    last_weight = [step.set_weight for step in settings.steps if step.set_weight is not None][-1]
    if last_weight < 100:
        steps.append(
            f"promoteFromLastWeight: the new version jumps from {last_weight}% to 100% of traffic at once "
            f"(no step observes it above {last_weight}%)"
        )
    steps += [
        f"promote: {spec.app}-stable gets {spec.image}, then 100% to stable, {spec.app}-canary scaled to 0",
        "on a failed check, abort or error: canary weight 0 at once, canary scaled to 0",
    ]
    return steps
