"""A/B testing: requests matching a header or cookie go to variant B; both are measured.

The seed's mechanism, the VirtualService header route (`canary: "true"` → the new version), as a
run of its own. Variant A is `{app}-stable` (the stable subset), variant B `{app}-canary` (the
canary subset), deployed, smoke tested, promoted and rolled back exactly as the canary strategy
does (this workflow is a canary run with a different middle). The middle: tidegate's match route
`tidegate-ab-{app}` is inserted before the other http routes (optionally with a share of the
unmatched traffic too), the analysis measures both variants over the same windows every interval
for `duration`, and B must stay within the relative bounds of the checks against A. Then B is
promoted, or a `pause` waits for a person's approve/abort while both variants' figures are shown.
Whatever the outcome, the match route is removed again by name, leaving the other routes as
they were.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.analysis import describe_bounds, format_value
from workflows.canary import CanaryWorkflow, istio_target
from workflows.common import pause_plan, smoke_plan

with workflow.unsafe.imports_passed_through():
    from activities.kubernetes import KubernetesActivities
    from deploy_models import (
        DeploymentInput,
        DeploymentResult,
        DeploymentSpec,
        MatchRoute,
        Outcome,
        Phase,
        Verdict,
        format_duration,
    )


def match_route(spec: DeploymentSpec) -> MatchRoute:
    return MatchRoute(
        target=istio_target(spec),
        name=f"tidegate-ab-{spec.app}",
        match=[match.istio() for match in spec.ab_test.match],
    )


def describe_match(spec: DeploymentSpec) -> str:
    """`header canary exact "true"` or `cookie user prefix "beta"`, any of them."""
    described = []
    for match in spec.ab_test.match:
        parts = [
            f"{kind} {name} {operator} {value!r}"
            for kind, matchers in (("header", match.headers), ("cookie", match.cookies))
            for name, matcher in matchers.items()
            for operator, value in matcher.istio().items()
        ]
        described.append(" and ".join(parts))
    return " or ".join(described)


@workflow.defn(name="AbTestDeployment")
class AbTestWorkflow(CanaryWorkflow):
    @workflow.init
    def __init__(self, deployment: DeploymentInput) -> None:
        super().__init__(deployment)
        self.route = match_route(self.spec)
        self.route_added = False

    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        return await self.settle(self._steps, self._roll_back)

    async def _steps(self) -> DeploymentResult:
        spec, settings = self.spec, self.spec.ab_test
        if not await self._deploy_canary():
            return await self._first_deployment()
        a, b = self.target.stable_subset, self.target.canary_subset

        self.set_phase(Phase.SHIFTING_TRAFFIC, f"routing requests with {describe_match(spec)} to B ({b})")
        self.route_added = True  # from here on, compensation removes the route (idempotently)
        await self.kubernetes(
            "add the A/B route",
            KubernetesActivities.add_match_route,
            self.route,
            summary=f"route {describe_match(spec)} to {b}",
            interruptible=False,
        )
        self.record("route", f"VirtualService {self.target.virtual_service}: {self.route.name} sends matching requests to {b}")
        if settings.unmatched_weight:
            await self._set_weight(settings.unmatched_weight, expected=0)

        self.set_phase(Phase.EXPERIMENTING, f"comparing B ({b}) with A ({a}) for {format_duration(settings.duration)}")
        await self.observe(settings.duration, "A/B experiment", end_on_a_pass=False)  # decided below
        last = self.last_measurement
        if self.promotion is None and (last is None or last.verdict != Verdict.PASS):
            self.set_phase(Phase.ANALYSING, "the experiment's last measurement was not a pass: measuring again")
            await self.one_off_analysis(None)
        if self.promotion is None:
            self.record("verdict", f"B ({b}) is not worse than A ({a}): {self._figures()}")
        if settings.pause is not None and self.promotion is None:
            if settings.pause.duration is None:
                self.set_phase(Phase.AWAITING_APPROVAL, f"B is not worse than A: waiting for approval to promote B ({b})")
            else:
                self.set_phase(Phase.OBSERVING, f"B is not worse than A: observing {format_duration(settings.pause.duration)} more")
            await self.observe(settings.pause.duration, "decision on the A/B experiment")

        await self._promote()
        reason = f"B ({spec.image}) is not worse than A ({self.previous_image}): {self._figures()}; promoted"
        if self.promotion is not None:
            reason = f"B ({spec.image}) promoted early by {self.promotion.by}"
        return await self.finish(Outcome.PROMOTED, reason, by=self.promotion.by if self.promotion else None)

    def _figures(self) -> str:
        """Both variants' last values, check by check: `error-rate B 0.004 vs A 0.005`."""
        last = self.last_measurement
        if last is None:
            return "not measured"
        return ", ".join(
            f"{c.name} B {format_value(c.value)}" + (f" vs A {format_value(c.baseline)}" if c.baseline is not None else "")
            for c in last.checks
        )

    async def _withdraw_routes(self) -> None:
        """Remove tidegate's match route by name (retried until done); the others stay as they are."""
        if not self.route_added:
            return
        removed = await self.restore(
            KubernetesActivities.remove_match_route,
            self.route,
            summary=f"remove route {self.route.name}",
        )
        self.route_added = False
        self.record(
            "route",
            f"VirtualService {self.target.virtual_service}: {self.route.name} "
            + ("removed" if removed else "was already gone"),
        )


def plan(spec: DeploymentSpec) -> list[str]:
    """The steps an A/B test of `spec` takes, for `starter.py plan`."""
    settings = spec.ab_test
    target = istio_target(spec)
    a, b = target.stable_subset, target.canary_subset
    analysis = spec.analysis
    assert analysis is not None
    steps = [
        f"read the image {spec.app}-stable runs: variant A (none: a first deployment, straight to stable)",
        f"ensure DestinationRule {target.destination_rule} (subsets {a}, {b}) and VirtualService "
        f"{target.virtual_service}; no traffic to {b}",
        f"apply Deployment {spec.app}-canary with {spec.image}: variant B; wait until ready "
        f"(progress deadline {format_duration(settings.progress_deadline)})",
        smoke_plan(settings.smoke_test, "strategy.abTest.smokeTest"),
        f"insert route tidegate-ab-{spec.app} first in VirtualService {target.virtual_service}: "
        f"{describe_match(spec)} → B ({b})",
    ]
    if settings.unmatched_weight:
        steps.append(f"send {settings.unmatched_weight}% of the other requests to B too")
    steps += [
        f"experiment for {format_duration(settings.duration)} (durable timer): every "
        f"{format_duration(analysis.interval)} measure both variants over the same window; B must stay within "
        + "; ".join(f"{check.name} {describe_bounds(check, 'A')}" for check in analysis.checks),
        "at the end, a last measurement must pass (re-measured within the limits if inconclusive)",
    ]
    if settings.pause is not None:
        steps.append(pause_plan(settings.pause, "with both variants' figures shown"))
    steps += [
        f"promote B: {spec.app}-stable gets {spec.image}, the route is removed, {spec.app}-canary scaled to 0",
        "on B worse than A, abort or error: the route removed (the VirtualService as it was), "
        f"{b} weight 0, {spec.app}-canary scaled to 0",
    ]
    return steps

