"""Fake activities with the real activities' names: an in-memory cluster that records actions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.policy import WorkerPolicy
from deploy_models import (
    DeploymentRestore,
    DeploymentSnapshot,
    DeploymentTarget,
    DeploymentUpdate,
    MatchRoute,
    PodsObserved,
    PodsWait,
    RestoreOutcome,
    IstioTarget,
    MeasureRequest,
    MetricValue,
    Notification,
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
    delete_failures: int = 0  # how many deletions fail (transiently) before succeeding
    replicas: dict[str, int] = field(default_factory=dict)
    canary_weight: int = 0
    weights: list[tuple[datetime, int]] = field(default_factory=list)  # (workflow time, weight)
    weight_failures: int = 0  # how many weight patches fail (transiently) before succeeding
    weight_refusals: int = 0  # how many are refused (403, not retryable) before succeeding
    # (metric query name, canary weight, workflow time) → value; None is no data; str an error
    metrics: Callable[[str, int, datetime], float | str | None] = lambda name, weight, at: 0.001
    measurements: list[datetime] = field(default_factory=list)
    policy: WorkerPolicy = field(default_factory=WorkerPolicy)  # the real one: it is pure

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
        await self._fail_if_never_ready(wait, "rollout failed", "become ready")
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
        if self.delete_failures > 0:
            self.delete_failures -= 1
            self.actions.append(f"delete {ref.name} failed")
            raise ApplicationError("503 etcd unavailable", type="KubernetesTransient")
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
        if self.weight_refusals > 0:
            self.weight_refusals -= 1
            self.actions.append(f"weight {change.weight} refused")
            raise ApplicationError("403 Forbidden: RBAC", type="KubernetesRejected", non_retryable=True)
        if change.expected is not None and change.expected != self.canary_weight:
            raise ApplicationError("someone else changed it", type="ConcurrentEdit", non_retryable=True)
        if change.expected == change.weight:
            return change.weight  # a check: nothing to write
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

    # -- rolling, recreate and A/B (never_ready above may also name an image) ------------------

    # images whose pods wait (heartbeating) until cancelled: run the worker with a short
    # max_heartbeat_throttle_interval so that the cancellation arrives at once
    hanging: set[str] = field(default_factory=set)
    hung: int = 0  # how many activities are hanging now
    scale_down_hangs: bool = False  # pods that never finish terminating: the `gone` wait hangs too
    edited_by_others: set[str] = field(default_factory=set)  # Deployments someone else changed
    strategies: dict[str, Any] = field(default_factory=dict)
    gone_after: timedelta = timedelta(seconds=2)  # how long after the poll starts the last pod is gone
    ready_after: timedelta = timedelta(seconds=3)  # how long after the poll starts the first pod is ready
    routes: list[str] = field(default_factory=list)  # the VirtualService's http routes, by name

    async def _fail_if_never_ready(self, wait: RolloutWait | PodsWait, action: str, what: str) -> None:
        """Hang for a `hanging` image; fail as the real wait does for a `never_ready` name, image
        or `name image` (one Deployment with one image)."""
        await self._hang(wait.name)
        if self._named(wait.name, self.never_ready):
            self.actions.append(f"{action} {wait.name}")
            raise ApplicationError(
                f"Deployment {wait.namespace}/{wait.name} did not {what} by its progress deadline",
                type="RolloutFailed",
                non_retryable=True,
            )

    def _named(self, name: str, entries: set[str]) -> bool:
        """Whether Deployment `name` (running its image now) is among `entries`: by name, image or `name image`."""
        image = self.deployments.get(name)
        return bool({name, image, f"{name} {image}"} & entries)

    async def _hang(self, name: str) -> None:
        """Pods of a `hanging` name, image or `name image`: wait (heartbeating) until the workflow cancels the wait."""
        if self._named(name, self.hanging):
            await self._heartbeat_until_cancelled()

    async def _heartbeat_until_cancelled(self) -> None:
        self.hung += 1
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.05)
        finally:
            self.hung -= 1

    @activity.defn(name="read_deployment")
    async def read_deployment(self, target: DeploymentTarget) -> DeploymentSnapshot | None:
        image = self.deployments.get(target.name)
        if image is None:
            return None
        labels = {"app": target.app, "version": "v1"}
        return DeploymentSnapshot(
            namespace=target.namespace,
            name=target.name,
            resource_version=str(len(self.actions)),
            replicas=self.replicas.get(target.name, 1),
            template={"metadata": {"labels": labels}, "spec": {"containers": [{"name": target.app, "image": image}]}},
            strategy=self.strategies.get(target.name),
            container=target.app,
            container_index=0,
            image=image,
            version="v1",
        )

    @activity.defn(name="update_deployment")
    async def update_deployment(self, update: DeploymentUpdate) -> None:
        name = update.snapshot.name
        if name in self.edited_by_others:
            raise ApplicationError(f"Deployment {name}: someone else changed it", type="ConcurrentEdit", non_retryable=True)
        self.actions.append(f"update {name} image={update.image} replicas={update.replicas}")
        if update.image is not None:
            self.deployments[name] = update.image
        if update.replicas is not None:
            self.replicas[name] = update.replicas
        if update.strategy is not None:
            self.strategies[name] = update.strategy

    @activity.defn(name="restore_deployment")
    async def restore_deployment(self, restore: DeploymentRestore) -> RestoreOutcome:
        snapshot = restore.snapshot
        if snapshot.name in self.edited_by_others:
            return RestoreOutcome(restored=False, message=f"{snapshot.name} was changed by someone else; left as it is")
        self.actions.append(f"restore {snapshot.name} {snapshot.image} replicas={snapshot.replicas}")
        self.deployments[snapshot.name] = snapshot.image
        self.replicas[snapshot.name] = snapshot.replicas
        self.strategies[snapshot.name] = snapshot.strategy
        return RestoreOutcome(restored=True, message=f"{snapshot.name} restored as recorded")

    @activity.defn(name="wait_for_pods")
    async def wait_for_pods(self, wait: PodsWait) -> PodsObserved:
        started = activity.info().current_attempt_scheduled_time
        if wait.until == "gone":
            if self.scale_down_hangs:
                await self._heartbeat_until_cancelled()
            self.actions.append(f"gone {wait.name}")
            return PodsObserved(at=started + self.gone_after, replicas=0, ready_replicas=0, message="0 pod(s) left")
        await self._fail_if_never_ready(wait, "never ready", "get a first ready pod")
        self.actions.append(f"first ready {wait.name} {self.deployments.get(wait.name)}")
        return PodsObserved(at=started + self.ready_after, replicas=3, ready_replicas=1, message="1 of 3 pod(s) ready")

    @activity.defn(name="add_match_route")
    async def add_match_route(self, route: MatchRoute) -> None:
        self.actions.append(f"add route {route.name}")
        if route.name not in self.routes:
            self.routes.insert(0, route.name)

    @activity.defn(name="remove_match_route")
    async def remove_match_route(self, route: MatchRoute) -> bool:
        self.actions.append(f"remove route {route.name}")
        if route.name not in self.routes:
            return False
        self.routes.remove(route.name)
        return True

    # -- notifications -----------------------------------------------------------------------

    notifications: list[Notification] = field(default_factory=list)  # every attempt, in order
    notify_fails: bool = False  # every notify attempt fails (a webhook that is down)

    @activity.defn(name="notify")
    async def notify(self, notification: Notification) -> list[str]:
        self.notifications.append(notification)
        if self.notify_fails:
            raise ApplicationError("webhook answered 503", type="NotificationFailed")
        return [f"{hook.format} webhook" for hook in notification.webhooks]

    def activities(self) -> list[Any]:
        return [
            self.policy.admit,
            self.notify,
            self.read_deployment,
            self.update_deployment,
            self.restore_deployment,
            self.wait_for_pods,
            self.add_match_route,
            self.remove_match_route,
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
