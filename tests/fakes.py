"""Fake activities with the real activities' names: an in-memory cluster that records actions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from deploy_models import (
    ObjectRef,
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

    @activity.defn(name="read_service_version")
    async def read_service_version(self, service: ServiceRef) -> str | None:
        return self.services.get(service.name)

    @activity.defn(name="apply_deployment")
    async def apply_deployment(self, workload: WorkloadSpec) -> None:
        self.actions.append(f"apply {workload.name} {workload.image}")
        self.deployments[workload.name] = workload.image

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

    def activities(self) -> list[Any]:
        return [
            self.read_service_version,
            self.apply_deployment,
            self.wait_for_rollout,
            self.switch_service,
            self.delete_deployment,
            self.smoke_test,
        ]
