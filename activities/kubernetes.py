"""Kubernetes side effects, through the official client (`kubernetes.aio`) only.

Each write is idempotent and guarded: Deployments are replaced with the resourceVersion just read
(a concurrent edit answers 409 and the retry re-reads), Service selectors are changed by a JSON
Patch whose `test` pins the resourceVersion, after checking that the selector is still the one
the workflow expects (someone else's edit is reported, never overwritten).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from deploy_models import ObjectRef, RolloutState, RolloutWait, ServiceRef, ServiceSwitch, WorkloadSpec

MANAGED_BY = {"app.kubernetes.io/managed-by": "tidegate"}
JSON_PATCH = "application/json-patch+json"
# Statuses a retry can fix: a concurrent edit (409), a failed JSON Patch `test` (422 from the
# patch's precondition, re-checked after re-reading), throttling and server trouble.
TRANSIENT_STATUSES = {409, 429, 500, 502, 503, 504}


def api_error(error: ApiException, action: str, retryable_statuses: set[int] = TRANSIENT_STATUSES) -> ApplicationError:
    """Turn an API error into Temporal's vocabulary, keeping the API's own message."""
    message = f"{action}: {error.status} {error.reason}"
    body = error.body
    if body:
        try:
            import json

            message += f": {json.loads(body).get('message', '')}".rstrip(": ")
        except (ValueError, AttributeError):
            message += f": {str(body)[:300]}"
    retryable = error.status in retryable_statuses or error.status == 0
    return ApplicationError(
        message,
        type="KubernetesTransient" if retryable else "KubernetesRejected",
        non_retryable=not retryable,
    )


def deployment_manifest(workload: WorkloadSpec) -> dict[str, Any]:
    selector = {"app": workload.app, workload.version_label: workload.version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload.name,
            "namespace": workload.namespace,
            "labels": {**selector, **MANAGED_BY},
        },
        "spec": {
            "replicas": workload.replicas,
            "progressDeadlineSeconds": workload.progress_deadline_seconds,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "containers": [
                        {
                            "name": workload.app,
                            "image": workload.image,
                            "ports": [{"name": "http", "containerPort": workload.container_port}],
                        }
                    ]
                },
            },
        },
    }


def rollout_progress(deployment: dict[str, Any]) -> tuple[bool, str, bool]:
    """kubectl's `rollout status` rule: (complete, what it is waiting for, deadline exceeded)."""
    metadata = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    generation = metadata.get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return False, "waiting for the controller to observe the new spec", False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return False, condition.get("message") or "progress deadline exceeded", True
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    replicas = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} replicas updated", False
    if replicas > updated:
        return False, f"{replicas - updated} old replicas pending termination", False
    if available < updated:
        return False, f"{available} of {updated} updated replicas available", False
    return True, f"{available} of {wanted} replicas available", False


class KubernetesActivities:
    """The Kubernetes activities, bound to one API client (a worker setting)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    async def _read(self, reader: Any, ref: ObjectRef) -> dict[str, Any] | None:
        """Read an object as a plain dict (None when it does not exist)."""
        try:
            found = await reader(name=ref.name, namespace=ref.namespace)
            return self.api.sanitize_for_serialization(found)
        except ApiException as error:
            if error.status == 404:
                return None
            raise api_error(error, f"read {ref.namespace}/{ref.name}") from None

    @activity.defn(name="read_service_version")
    async def read_service_version(self, service: ServiceRef) -> str | None:
        """The version label a Service selects (None when the Service does not exist yet)."""
        found = await self._read(self.core.read_namespaced_service, service)
        if found is None:
            return None
        return (found.get("spec", {}).get("selector") or {}).get(service.version_label)

    @activity.defn(name="apply_deployment")
    async def apply_deployment(self, workload: WorkloadSpec) -> None:
        """Create the Deployment, or replace it at the resourceVersion just read."""
        manifest = deployment_manifest(workload)
        ref = ObjectRef(namespace=workload.namespace, name=workload.name)
        existing = await self._read(self.apps.read_namespaced_deployment, ref)
        try:
            if existing is None:
                await self.apps.create_namespaced_deployment(namespace=workload.namespace, body=manifest)
            else:
                manifest["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                await self.apps.replace_namespaced_deployment(
                    name=workload.name, namespace=workload.namespace, body=manifest
                )
        except ApiException as error:
            raise api_error(error, f"apply Deployment {workload.namespace}/{workload.name}") from None

    @activity.defn(name="wait_for_rollout")
    async def wait_for_rollout(self, wait: RolloutWait) -> RolloutState:
        """Poll until the rollout completes; heartbeats so a lost worker is noticed in seconds."""
        ref = ObjectRef(namespace=wait.namespace, name=wait.name)
        while True:
            found = await self._read(self.apps.read_namespaced_deployment, ref)
            if found is None:
                raise ApplicationError(
                    f"Deployment {wait.namespace}/{wait.name} disappeared during its rollout",
                    type="RolloutFailed",
                    non_retryable=True,
                )
            complete, message, exceeded = rollout_progress(found)
            status = found.get("status") or {}
            state = RolloutState(
                replicas=status.get("replicas", 0),
                updated_replicas=status.get("updatedReplicas", 0),
                ready_replicas=status.get("readyReplicas", 0),
                available_replicas=status.get("availableReplicas", 0),
                complete=complete,
                message=message,
            )
            activity.heartbeat(state.model_dump(mode="json"))
            if complete:
                return state
            if exceeded or datetime.now(timezone.utc) >= wait.deadline:
                raise ApplicationError(
                    f"Deployment {wait.namespace}/{wait.name} did not become ready by its progress "
                    f"deadline: {message}",
                    type="RolloutFailed",
                    non_retryable=True,
                )
            await asyncio.sleep(wait.poll_interval.total_seconds())

    @activity.defn(name="switch_service")
    async def switch_service(self, switch: ServiceSwitch) -> None:
        """Point a Service at `to_version`, refusing to overwrite someone else's selector."""
        ref = ObjectRef(namespace=switch.namespace, name=switch.name)
        found = await self._read(self.core.read_namespaced_service, ref)
        action = f"switch Service {switch.namespace}/{switch.name} to {switch.to_version}"
        if found is None:
            if switch.from_version is not None and not switch.any_current:
                raise ApplicationError(f"{action}: the Service does not exist", non_retryable=True)
            await self._create_service(switch, action)
            return
        selector = found.get("spec", {}).get("selector") or {}
        current = selector.get(switch.version_label)
        if current == switch.to_version:
            return  # already done (a retry after success)
        if current != switch.from_version and not switch.any_current:
            raise ApplicationError(
                f"{action}: it selects {switch.version_label}={current!r} but tidegate left it at "
                f"{switch.from_version!r}; someone else changed it, so tidegate does not overwrite it",
                type="ConcurrentEdit",
                non_retryable=True,
            )
        path = "/spec/selector/" + switch.version_label.replace("~", "~0").replace("/", "~1")
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": found["metadata"]["resourceVersion"]},
            {"op": "replace" if current is not None else "add", "path": path, "value": switch.to_version},
        ]
        if not found.get("spec", {}).get("selector"):
            patch[1] = {"op": "add", "path": "/spec/selector", "value": {switch.version_label: switch.to_version}}
        try:
            await self.core.patch_namespaced_service(
                name=switch.name, namespace=switch.namespace, body=patch, _content_type=JSON_PATCH
            )
        except ApiException as error:
            raise api_error(error, action, TRANSIENT_STATUSES | {422}) from None

    async def _create_service(self, switch: ServiceSwitch, action: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": switch.name,
                "namespace": switch.namespace,
                "labels": {"app": switch.app, **MANAGED_BY},
            },
            "spec": {
                "selector": {"app": switch.app, switch.version_label: switch.to_version},
                "ports": [{"name": "http", "port": switch.port, "targetPort": switch.target_port}],
            },
        }
        try:
            await self.core.create_namespaced_service(namespace=switch.namespace, body=body)
        except ApiException as error:
            # 409: created meanwhile (by our own earlier attempt, or by someone): re-read on retry.
            raise api_error(error, action) from None

    @activity.defn(name="delete_deployment")
    async def delete_deployment(self, ref: ObjectRef) -> None:
        """Delete a Deployment; one that is already gone counts as deleted."""
        try:
            await self.apps.delete_namespaced_deployment(name=ref.name, namespace=ref.namespace)
        except ApiException as error:
            if error.status != 404:
                raise api_error(error, f"delete Deployment {ref.namespace}/{ref.name}") from None

    def all(self) -> list[Any]:
        """Every activity of this class, for registering with a worker."""
        return [
            self.read_service_version,
            self.apply_deployment,
            self.wait_for_rollout,
            self.switch_service,
            self.delete_deployment,
        ]
