"""Fake activities with the real activities' names: an in-memory cluster that records actions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from deploy_models import (
    IstioTarget,
    MeasureRequest,
    MetricValue,
    ObjectRef,
    ScaleRequest,
    ServiceSpec,
    WeightChange,
    RolloutState,
    RolloutWait,
    ServiceRef,
    ServiceSwitch,
    SmokeCheck,
    SmokeResult,
    WorkloadSpec,
)


@dataclass
class FakeCluster:
    """Services (name → selected version) and Deployments (name → image) in memory."""

    services: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, str] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    never_ready: set[str] = field(default_factory=set)
    smoke_status: int = 200
    switch_failures: int = 0  # how many switch calls fail (transiently) before succeeding
    replicas: dict[str, int] = field(default_factory=dict)
    canary_weight: int = 0
    weights: list[tuple[datetime, int]] = field(default_factory=list)  # (workflow time, weight)
    weight_failures: int = 0  # how many weight patches fail (transiently) before succeeding
    # (metric query name, canary weight, workflow time) → value; None is no data; str an error
    metrics: Callable[[str, int, datetime], float | str | None] = lambda name, weight, at: 0.001
    measurements: list[datetime] = field(default_factory=list)

    @activity.defn(name="read_service_version")
    async def read_service_version(self, service: ServiceRef) -> str | None:
        return self.services.get(service.name)

    @activity.defn(name="apply_deployment")
    async def apply_deployment(self, workload: WorkloadSpec) -> None:
        self.actions.append(f"apply {workload.name} {workload.image}")
        self.deployments[workload.name] = workload.image
        self.replicas[workload.name] = workload.replicas

    @activity.defn(name="wait_for_rollout")
    async def wait_for_rollout(self, wait: RolloutWait) -> RolloutState:
        if wait.name in self.never_ready:
            self.actions.append(f"rollout failed {wait.name}")
            raise ApplicationError(
                f"Deployment {wait.namespace}/{wait.name} did not become ready by its progress deadline",
                type="RolloutFailed",
                non_retryable=True,
            )
        self.actions.append(f"ready {wait.name}")
        return RolloutState(
            replicas=3, updated_replicas=3, ready_replicas=3, available_replicas=3, complete=True, message="3 of 3"
        )

    @activity.defn(name="switch_service")
    async def switch_service(self, switch: ServiceSwitch) -> None:
        if self.switch_failures > 0:
            self.switch_failures -= 1
            self.actions.append(f"switch {switch.name} failed")
            raise ApplicationError("503 Service Unavailable", type="KubernetesTransient")
        self.actions.append(f"switch {switch.name} {switch.from_version}->{switch.to_version}")
        self.services[switch.name] = switch.to_version

    @activity.defn(name="delete_deployment")
    async def delete_deployment(self, ref: ObjectRef) -> None:
        self.actions.append(f"delete {ref.name}")
        self.deployments.pop(ref.name, None)

    @activity.defn(name="smoke_test")
    async def smoke_test(self, check: SmokeCheck) -> SmokeResult:
        self.actions.append(f"smoke {check.url}")
        if self.smoke_status != check.expect_status:
            raise ApplicationError(
                f"GET {check.url} answered {self.smoke_status}, expected {check.expect_status}",
                type="SmokeTestFailed",
            )
        return SmokeResult(url=check.url, status=self.smoke_status, elapsed_ms=1.0)

    @activity.defn(name="ensure_service")
    async def ensure_service(self, service: ServiceSpec) -> None:
        self.services.setdefault(service.name, service.selector.get("version", ""))

    @activity.defn(name="scale_deployment")
    async def scale_deployment(self, scale: ScaleRequest) -> None:
        self.actions.append(f"scale {scale.name} {scale.replicas}")
        self.replicas[scale.name] = scale.replicas

    @activity.defn(name="read_deployment_image")
    async def read_deployment_image(self, ref: ObjectRef) -> str | None:
        return self.deployments.get(ref.name)

    @activity.defn(name="ensure_routing")
    async def ensure_routing(self, target: IstioTarget) -> int:
        return self.canary_weight

    @activity.defn(name="set_canary_weight")
    async def set_canary_weight(self, change: WeightChange) -> int:
        if self.weight_failures > 0:
            self.weight_failures -= 1
            self.actions.append(f"weight {change.weight} failed")
            raise ApplicationError("500 etcd unavailable", type="KubernetesTransient")
        if change.expected is not None and change.expected != self.canary_weight:
            raise ApplicationError("someone else changed it", type="ConcurrentEdit", non_retryable=True)
        self.actions.append(f"weight {change.weight}")
        self.canary_weight = change.weight
        self.weights.append((activity.info().current_attempt_scheduled_time, change.weight))
        return change.weight

    @activity.defn(name="measure")
    async def measure(self, request: MeasureRequest) -> list[MetricValue]:
        at = activity.info().current_attempt_scheduled_time
        self.measurements.append(at)
        values = []
        for query in request.queries:
            value = self.metrics(query.name, self.canary_weight, at)
            if isinstance(value, str):
                values.append(MetricValue(name=query.name, query=query.query, error=value))
            else:
                values.append(MetricValue(name=query.name, query=query.query, value=value))
        return values

    def activities(self) -> list[Any]:
        return [
            self.ensure_service,
            self.scale_deployment,
            self.read_deployment_image,
            self.ensure_routing,
            self.set_canary_weight,
            self.measure,
            self.read_service_version,
            self.apply_deployment,
            self.wait_for_rollout,
            self.switch_service,
            self.delete_deployment,
            self.smoke_test,
        ]
