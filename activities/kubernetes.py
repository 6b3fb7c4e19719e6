"""Kubernetes side effects, through the official client (`kubernetes.aio`) only.

Each write is idempotent and guarded: Deployments are replaced with the resourceVersion just read
(a concurrent edit answers 409 and the retry re-reads), Service selectors are changed by a JSON
Patch whose `test` pins the resourceVersion, after checking that the selector is still the one
the workflow expects (someone else's edit is reported, never overwritten).
"""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime, timezone
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from deploy_models import (
    DeploymentRestore,
    DeploymentSnapshot,
    DeploymentTarget,
    DeploymentUpdate,
    IstioTarget,
    MatchRoute,
    ObjectRef,
    PodsObserved,
    PodsWait,
    RestoreOutcome,
    RolloutState,
    RolloutWait,
    ScaleRequest,
    ServiceRef,
    ServiceSpec,
    ServiceSwitch,
    WeightChange,
    WorkloadSpec,
)

MANAGED_BY = {"app.kubernetes.io/managed-by": "tidegate"}
JSON_PATCH = "application/json-patch+json"
CONFLICT_ATTEMPTS = 3
MERGE_PATCH = "application/merge-patch+json"
ISTIO_GROUP, ISTIO_VERSION = "networking.istio.io", "v1"
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


def pods_progress(deployment: dict[str, Any], until: str) -> tuple[bool, str, bool]:
    """(done, what it is waiting for, deadline exceeded) of waiting for the pods to be `gone`
    or for the `firstReady` pod of the Deployment's current template."""
    generation = deployment.get("metadata", {}).get("generation", 0)
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < generation:
        return False, "waiting for the controller to observe the new spec", False
    replicas, ready = status.get("replicas", 0), status.get("readyReplicas", 0)
    if until == "gone":
        return replicas == 0, f"{replicas} pod(s) left", False
    exceeded = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or []
    )
    return status.get("updatedReplicas", 0) > 0 and ready > 0, f"{ready} of {replicas} pod(s) ready", exceeded


def with_image(template: dict[str, Any], index: int, image: str) -> dict[str, Any]:
    """A copy of a pod template whose container `index` runs `image`."""
    changed = copy.deepcopy(template)
    changed["spec"]["containers"][index]["image"] = image
    return changed


def pick_container(target: DeploymentTarget, containers: list[dict[str, Any]]) -> int:
    """The container whose image changes: the one named, else the only one, else the app's."""
    names = [str(c.get("name")) for c in containers]
    where = f"Deployment {target.namespace}/{target.name}"
    if target.container is not None:
        if target.container in names:
            return names.index(target.container)
        problem = f"{where} has no container {target.container!r} (it has: {', '.join(names) or 'none'})"
    elif len(names) == 1:
        return 0
    elif target.app in names:
        return names.index(target.app)
    else:
        problem = f"{where} has containers {', '.join(names) or 'none'}: name the one to update in the strategy's `container`"
    raise ApplicationError(problem, type="KubernetesRejected", non_retryable=True)


def deployment_changes(
    spec: dict[str, Any],
    template: dict[str, Any],
    replicas: int | None,
    strategy: dict[str, Any] | None,
    remove_strategy: bool = False,
) -> list[dict[str, Any]]:
    """The JSON Patch operations that give a Deployment's `spec` this template, these replicas and
    this strategy (None: keep; with `remove_strategy`, None removes it). Empty: nothing to do."""
    changes: list[dict[str, Any]] = []
    if spec.get("template") != template:
        changes.append({"op": "replace", "path": "/spec/template", "value": template})
    if replicas is not None and spec.get("replicas", 1) != replicas:
        changes.append({"op": "add", "path": "/spec/replicas", "value": replicas})
    if strategy is not None and spec.get("strategy") != strategy:
        changes.append({"op": "add", "path": "/spec/strategy", "value": strategy})
    elif strategy is None and remove_strategy and "strategy" in spec:
        changes.append({"op": "remove", "path": "/spec/strategy"})
    return changes


def destination_rule_manifest(target: IstioTarget) -> dict[str, Any]:
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "DestinationRule",
        "metadata": {"name": target.destination_rule, "namespace": target.namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "host": target.host,
            "subsets": [
                {"name": subset, "labels": {target.version_label: subset}}
                for subset in (target.stable_subset, target.canary_subset)
            ],
        },
    }


def virtual_service_manifest(target: IstioTarget) -> dict[str, Any]:
    """The seed's weighted route, all to stable. The seed's header route (`canary: "true"`) is
    left out: a canary must get no traffic before it is ready and smoke tested; A/B tests add
    their match route for the length of the experiment."""
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": target.virtual_service, "namespace": target.namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "hosts": [target.host],
            "http": [{"name": target.route or "primary", "route": weighted_route([], target, 0)}],
        },
    }


def find_route(service: dict[str, Any], target: IstioTarget) -> tuple[int, list[dict[str, Any]]]:
    """The http route whose weights move: the one named `route`, or the only unmatched route
    that sends traffic to the stable subset."""
    routes = service.get("spec", {}).get("http") or []
    where = f"VirtualService {target.namespace}/{target.virtual_service}"
    if target.route is not None:
        for index, route in enumerate(routes):
            if route.get("name") == target.route:
                return index, route.get("route") or []
        names = ", ".join(str(r.get("name")) for r in routes)
        raise ApplicationError(
            f"{where} has no http route named {target.route!r} (it has: {names or 'none'})",
            type="KubernetesRejected",
            non_retryable=True,
        )
    candidates = [
        index
        for index, route in enumerate(routes)
        if not route.get("match")
        and any(d.get("destination", {}).get("subset") == target.stable_subset for d in route.get("route") or [])
    ]
    if len(candidates) != 1:
        raise ApplicationError(
            f"{where} has {len(candidates)} unmatched routes to subset {target.stable_subset}; "
            "name the one to edit in strategy.canary.trafficRouting.istio.virtualService.route",
            type="KubernetesRejected",
            non_retryable=True,
        )
    return candidates[0], routes[candidates[0]].get("route") or []


def route_weights(route: list[dict[str, Any]], target: IstioTarget) -> tuple[int, int]:
    """(stable %, canary %) of a route; a lone destination without a weight takes 100."""
    weights = {target.stable_subset: 0, target.canary_subset: 0}
    for destination in route:
        subset = destination.get("destination", {}).get("subset")
        if subset in weights:
            weights[subset] += destination.get("weight", 100 if len(route) == 1 else 0)
    return weights[target.stable_subset], weights[target.canary_subset]


def weighted_route(route: list[dict[str, Any]], target: IstioTarget, weight: int) -> list[dict[str, Any]]:
    """The route with stable at 100-weight and canary at weight (other destination fields kept)."""
    existing = {d.get("destination", {}).get("subset"): d for d in route}
    result = []
    for subset, share in ((target.stable_subset, 100 - weight), (target.canary_subset, weight)):
        destination = dict(existing.get(subset, {}).get("destination") or {"host": target.host})
        destination["subset"] = subset
        result.append({**existing.get(subset, {}), "destination": destination, "weight": share})
    return result


class KubernetesActivities:
    """The Kubernetes activities, bound to one API client (a worker setting)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

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
        # The controller's status writes move the resourceVersion too: re-read and retry a
        # conflict a few times here (as client-go's RetryOnConflict) before Temporal's retry.
        for attempt in range(CONFLICT_ATTEMPTS):
            existing = await self._read(self.apps.read_namespaced_deployment, ref)
            try:
                if existing is None:
                    await self.apps.create_namespaced_deployment(namespace=workload.namespace, body=manifest)
                else:
                    manifest["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                    await self.apps.replace_namespaced_deployment(
                        name=workload.name, namespace=workload.namespace, body=manifest
                    )
                return
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_ATTEMPTS - 1:
                    raise api_error(error, f"apply Deployment {workload.namespace}/{workload.name}") from None

    async def _poll(
        self, wait: RolloutWait | PodsWait, what: str, progress: Any
    ) -> tuple[dict[str, Any], str]:
        """Read the Deployment every poll interval until `progress(it)` says (done, message,
        failed) done; heartbeats so a lost worker is noticed in seconds. Fails at the deadline."""
        ref = ObjectRef(namespace=wait.namespace, name=wait.name)
        while True:
            found = await self._read(self.apps.read_namespaced_deployment, ref)
            if found is None:
                raise ApplicationError(
                    f"Deployment {wait.namespace}/{wait.name} disappeared while waiting for it to {what}",
                    type="RolloutFailed",
                    non_retryable=True,
                )
            done, message, failed = progress(found)
            activity.heartbeat({"message": message, **(found.get("status") or {})})
            if done:
                return found, message
            if failed or datetime.now(timezone.utc) >= wait.deadline:
                raise ApplicationError(
                    f"Deployment {wait.namespace}/{wait.name} did not {what} by its progress deadline: {message}",
                    type="RolloutFailed",
                    non_retryable=True,
                )
            await asyncio.sleep(wait.poll_interval.total_seconds())

    @activity.defn(name="wait_for_rollout")
    async def wait_for_rollout(self, wait: RolloutWait) -> RolloutState:
        """Poll until the rollout completes (kubectl's `rollout status` rule)."""
        found, message = await self._poll(wait, "become ready", rollout_progress)
        status = found.get("status") or {}
        return RolloutState(
            replicas=status.get("replicas", 0),
            updated_replicas=status.get("updatedReplicas", 0),
            ready_replicas=status.get("readyReplicas", 0),
            available_replicas=status.get("availableReplicas", 0),
            complete=True,
            message=message,
        )

    @activity.defn(name="wait_for_pods")
    async def wait_for_pods(self, wait: PodsWait) -> PodsObserved:
        """Poll until no pod is left (`gone`) or the first pod of the current template is ready
        (`firstReady`); return when a poll first saw it: an observed time, for reporting."""
        what = "scale down to 0" if wait.until == "gone" else "get a first ready pod"
        found, message = await self._poll(wait, what, lambda deployment: pods_progress(deployment, wait.until))
        status = found.get("status") or {}
        return PodsObserved(
            at=datetime.now(timezone.utc),
            replicas=status.get("replicas", 0),
            ready_replicas=status.get("readyReplicas", 0),
            message=message,
        )

    @activity.defn(name="switch_service")
    async def switch_service(self, switch: ServiceSwitch) -> None:
        """Point a Service at `to_version`, refusing to overwrite someone else's selector."""
        ref = ObjectRef(namespace=switch.namespace, name=switch.name)
        found = await self._read(self.core.read_namespaced_service, ref)
        action = f"switch Service {switch.namespace}/{switch.name} to {switch.to_version}"
        if found is None:
            if switch.from_version is not None and not switch.any_current:
                raise ApplicationError(f"{action}: the Service does not exist", non_retryable=True)
            selector = {"app": switch.app, switch.version_label: switch.to_version}
            service = ServiceSpec(
                namespace=switch.namespace,
                name=switch.name,
                app=switch.app,
                selector=selector,
                port=switch.port,
                target_port=switch.target_port,
            )
            await self._create_service(service, action)
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

    async def _create_service(self, service: ServiceSpec, action: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": service.name,
                "namespace": service.namespace,
                "labels": {"app": service.app, **MANAGED_BY},
            },
            "spec": {
                "selector": service.selector,
                "ports": [{"name": "http", "port": service.port, "targetPort": service.target_port}],
            },
        }
        try:
            await self.core.create_namespaced_service(namespace=service.namespace, body=body)
        except ApiException as error:
            # 409: created meanwhile (by our own earlier attempt, or by someone): re-read on retry.
            raise api_error(error, action) from None

    @activity.defn(name="ensure_service")
    async def ensure_service(self, service: ServiceSpec) -> None:
        """Create the Service when it is missing; an existing one is left exactly as it is."""
        ref = ObjectRef(namespace=service.namespace, name=service.name)
        if await self._read(self.core.read_namespaced_service, ref) is None:
            await self._create_service(service, f"create Service {service.namespace}/{service.name}")

    @activity.defn(name="delete_deployment")
    async def delete_deployment(self, ref: ObjectRef) -> None:
        """Delete a Deployment; one that is already gone counts as deleted."""
        try:
            await self.apps.delete_namespaced_deployment(name=ref.name, namespace=ref.namespace)
        except ApiException as error:
            if error.status != 404:
                raise api_error(error, f"delete Deployment {ref.namespace}/{ref.name}") from None

    @activity.defn(name="scale_deployment")
    async def scale_deployment(self, scale: ScaleRequest) -> None:
        """Set a Deployment's replicas (a merge patch: the same request twice is the same state)."""
        try:
            await self.apps.patch_namespaced_deployment(
                name=scale.name,
                namespace=scale.namespace,
                body={"spec": {"replicas": scale.replicas}},
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if error.status == 404 and scale.replicas == 0:
                return  # nothing to scale down
            raise api_error(error, f"scale Deployment {scale.namespace}/{scale.name} to {scale.replicas}") from None

    @activity.defn(name="read_deployment_image")
    async def read_deployment_image(self, ref: ObjectRef) -> str | None:
        """The image a Deployment runs (None when it does not exist)."""
        found = await self._read(self.apps.read_namespaced_deployment, ref)
        if found is None:
            return None
        containers = found.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
        return containers[0].get("image")

    async def _read_istio(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = await self.custom.get_namespaced_custom_object(
                group=ISTIO_GROUP, version=ISTIO_VERSION, namespace=namespace, plural=plural, name=name
            )
            return found if isinstance(found, dict) else self.api.sanitize_for_serialization(found)
        except ApiException as error:
            if error.status == 404:
                return None
            raise api_error(error, f"read {plural} {namespace}/{name}") from None

    async def _create_istio(self, plural: str, namespace: str, body: dict[str, Any]) -> None:
        try:
            await self.custom.create_namespaced_custom_object(
                group=ISTIO_GROUP, version=ISTIO_VERSION, namespace=namespace, plural=plural, body=body
            )
        except ApiException as error:
            raise api_error(error, f"create {plural} {namespace}/{body['metadata']['name']}") from None

    @activity.defn(name="ensure_routing")
    async def ensure_routing(self, target: IstioTarget) -> int:
        """Create the DestinationRule and VirtualService in the seed's shape when missing.

        Existing ones are checked, not rewritten: the subsets must exist and the route to edit
        must be found. Returns the canary's current weight.
        """
        namespace = target.namespace
        rule = await self._read_istio("destinationrules", namespace, target.destination_rule)
        if rule is None:
            await self._create_istio("destinationrules", namespace, destination_rule_manifest(target))
        else:
            names = {subset.get("name") for subset in rule.get("spec", {}).get("subsets") or []}
            missing = sorted({target.stable_subset, target.canary_subset} - names)
            if missing:
                raise ApplicationError(
                    f"DestinationRule {namespace}/{target.destination_rule} has no subset(s) "
                    f"{', '.join(missing)} (it has {', '.join(sorted(n for n in names if n)) or 'none'})",
                    type="KubernetesRejected",
                    non_retryable=True,
                )
        service = await self._read_istio("virtualservices", namespace, target.virtual_service)
        if service is None:
            service = virtual_service_manifest(target)
            await self._create_istio("virtualservices", namespace, service)
        _, route = find_route(service, target)
        return route_weights(route, target)[1]

    @activity.defn(name="set_canary_weight")
    async def set_canary_weight(self, change: WeightChange) -> int:
        """Move traffic: stable 100-N, canary N, in one guarded patch, verified by reading back."""
        target = change.target
        where = f"VirtualService {target.namespace}/{target.virtual_service}"
        service = await self._read_istio("virtualservices", target.namespace, target.virtual_service)
        if service is None:
            raise ApplicationError(f"{where} does not exist", type="KubernetesRejected", non_retryable=True)
        index, route = find_route(service, target)
        stable, canary = route_weights(route, target)
        there = (stable, canary) == (100 - change.weight, change.weight)
        if there and (change.expected in (None, change.weight) or activity.info().attempt > 1):
            return change.weight  # already there (unchanged, or an earlier attempt's write)
        if change.expected is not None and canary != change.expected:
            raise ApplicationError(
                f"{where} sends {canary}% to {target.canary_subset} and {stable}% to {target.stable_subset}, "
                f"but tidegate set {change.expected}%: someone else changed it; tidegate does not go on "
                "with a split it did not set",
                type="ConcurrentEdit",
                non_retryable=True,
            )
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": service["metadata"]["resourceVersion"]},
            {"op": "replace", "path": f"/spec/http/{index}/route", "value": weighted_route(route, target, change.weight)},
        ]
        await self._patch_virtual_service(target, patch, f"set {where} canary weight to {change.weight}")
        after = await self._read_istio("virtualservices", target.namespace, target.virtual_service)
        weights = route_weights(find_route(after or {}, target)[1], target) if after else None
        if weights != (100 - change.weight, change.weight):
            raise ApplicationError(
                f"{where} reads back {weights} after setting canary weight {change.weight}", type="KubernetesTransient"
            )
        return change.weight

    async def _patch_virtual_service(self, target: IstioTarget, patch: list[dict[str, Any]], action: str) -> None:
        """A guarded JSON Patch: a failed `test` (422) means it changed meanwhile; the retry re-reads."""
        try:
            await self.custom.patch_namespaced_custom_object(
                group=ISTIO_GROUP,
                version=ISTIO_VERSION,
                namespace=target.namespace,
                plural="virtualservices",
                name=target.virtual_service,
                body=patch,
                _content_type=JSON_PATCH,
            )
        except ApiException as error:
            raise api_error(error, action, TRANSIENT_STATUSES | {422}) from None

    async def _match_route_index(self, route: MatchRoute) -> tuple[dict[str, Any] | None, int | None]:
        """The VirtualService (None: missing) and the index of the route named `route.name`."""
        target = route.target
        service = await self._read_istio("virtualservices", target.namespace, target.virtual_service)
        routes = (service or {}).get("spec", {}).get("http") or []
        index = next((i for i, r in enumerate(routes) if r.get("name") == route.name), None)
        return service, index

    @activity.defn(name="add_match_route")
    async def add_match_route(self, route: MatchRoute) -> None:
        """Insert the A/B route first among the http routes (or make it what it should be)."""
        target = route.target
        where = f"VirtualService {target.namespace}/{target.virtual_service}"
        service, index = await self._match_route_index(route)
        if service is None:
            raise ApplicationError(f"{where} does not exist", type="KubernetesRejected", non_retryable=True)
        wanted = route.istio()
        guard = {"op": "test", "path": "/metadata/resourceVersion", "value": service["metadata"]["resourceVersion"]}
        if index is not None:
            if service["spec"]["http"][index] == wanted:
                return  # already there (a retry after success)
            change = {"op": "replace", "path": f"/spec/http/{index}", "value": wanted}
        elif service.get("spec", {}).get("http"):
            change = {"op": "add", "path": "/spec/http/0", "value": wanted}
        else:
            change = {"op": "add", "path": "/spec/http", "value": [wanted]}
        await self._patch_virtual_service(target, [guard, change], f"add route {route.name} to {where}")

    @activity.defn(name="remove_match_route")
    async def remove_match_route(self, route: MatchRoute) -> bool:
        """Remove exactly the A/B route (found by name); everything else stays. False: not there."""
        target = route.target
        service, index = await self._match_route_index(route)
        if service is None or index is None:
            return False  # already removed (a retry after success), or never added
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": service["metadata"]["resourceVersion"]},
            {"op": "test", "path": f"/spec/http/{index}/name", "value": route.name},
            {"op": "remove", "path": f"/spec/http/{index}"},
        ]
        where = f"VirtualService {target.namespace}/{target.virtual_service}"
        await self._patch_virtual_service(target, patch, f"remove route {route.name} from {where}")
        return True

    @activity.defn(name="read_deployment")
    async def read_deployment(self, target: DeploymentTarget) -> DeploymentSnapshot | None:
        """Record a Deployment as it is (None when it does not exist), to change and restore it."""
        found = await self._read(self.apps.read_namespaced_deployment, ObjectRef(namespace=target.namespace, name=target.name))
        if found is None:
            return None
        spec = found.get("spec", {})
        template = spec.get("template") or {}
        index = pick_container(target, (template.get("spec") or {}).get("containers") or [])
        container = template["spec"]["containers"][index]
        return DeploymentSnapshot(
            namespace=target.namespace,
            name=target.name,
            resource_version=found["metadata"]["resourceVersion"],
            replicas=spec.get("replicas", 1),
            template=template,
            strategy=spec.get("strategy"),
            container=container.get("name", ""),
            container_index=index,
            image=container.get("image", ""),
            version=((template.get("metadata") or {}).get("labels") or {}).get("version"),
        )

    async def _patch_deployment(self, snapshot: DeploymentSnapshot, patch: list[dict[str, Any]], action: str) -> None:
        try:
            await self.apps.patch_namespaced_deployment(
                name=snapshot.name, namespace=snapshot.namespace, body=patch, _content_type=JSON_PATCH
            )
        except ApiException as error:
            raise api_error(error, action, TRANSIENT_STATUSES | {422}) from None

    @activity.defn(name="update_deployment")
    async def update_deployment(self, update: DeploymentUpdate) -> None:
        """Change a recorded Deployment's image, replicas and strategy in one guarded JSON Patch.

        The pod template must still be the recorded one (or already the updated one: a retry
        after success); someone else's change is reported, never overwritten.
        """
        snapshot = update.snapshot
        where = f"Deployment {snapshot.namespace}/{snapshot.name}"
        found = await self._read(self.apps.read_namespaced_deployment, ObjectRef(namespace=snapshot.namespace, name=snapshot.name))
        if found is None:
            raise ApplicationError(f"{where} no longer exists", type="KubernetesRejected", non_retryable=True)
        spec = found.get("spec", {})
        wanted = snapshot.template if update.image is None else with_image(snapshot.template, snapshot.container_index, update.image)
        if spec.get("template") not in (snapshot.template, wanted):
            raise ApplicationError(
                f"{where}: its pod template changed since tidegate recorded it (resourceVersion "
                f"{snapshot.resource_version}); someone else changed it, so tidegate does not overwrite it",
                type="ConcurrentEdit",
                non_retryable=True,
            )
        patch = deployment_changes(spec, wanted, update.replicas, update.strategy)
        if patch:
            guard = {"op": "test", "path": "/metadata/resourceVersion", "value": found["metadata"]["resourceVersion"]}
            await self._patch_deployment(snapshot, [guard, *patch], f"update {where}")

    @activity.defn(name="restore_deployment")
    async def restore_deployment(self, restore: DeploymentRestore) -> RestoreOutcome:
        """Put back the recorded pod template, replicas and strategy (a guarded JSON Patch).

        Only over what tidegate left there: a template someone else changed meanwhile is left as
        it is, and the outcome says so.
        """
        snapshot = restore.snapshot
        where = f"Deployment {snapshot.namespace}/{snapshot.name}"
        found = await self._read(self.apps.read_namespaced_deployment, ObjectRef(namespace=snapshot.namespace, name=snapshot.name))
        if found is None:
            return RestoreOutcome(restored=False, message=f"{where} was deleted meanwhile: nothing to restore")
        spec = found.get("spec", {})
        ours = [snapshot.template]
        if restore.applied_image is not None:
            ours.append(with_image(snapshot.template, snapshot.container_index, restore.applied_image))
        if spec.get("template") not in ours:
            return RestoreOutcome(
                restored=False,
                message=f"{where}: its pod template was changed by someone else meanwhile; tidegate left it as it is",
            )
        patch = deployment_changes(spec, snapshot.template, snapshot.replicas, snapshot.strategy, remove_strategy=True)
        if not patch:
            return RestoreOutcome(restored=True, message=f"{where} is as recorded")
        guard = {"op": "test", "path": "/metadata/resourceVersion", "value": found["metadata"]["resourceVersion"]}
        await self._patch_deployment(snapshot, [guard, *patch], f"restore {where}")
        restored = ", ".join(change["path"].removeprefix("/spec/") for change in patch)
        return RestoreOutcome(restored=True, message=f"{where}: {restored} restored as recorded")

    def all(self) -> list[Any]:
        """Every activity of this class, for registering with a worker."""
        return [
            self.read_service_version,
            self.apply_deployment,
            self.wait_for_rollout,
            self.switch_service,
            self.delete_deployment,
            self.ensure_service,
            self.scale_deployment,
            self.read_deployment_image,
            self.ensure_routing,
            self.set_canary_weight,
            self.add_match_route,
            self.remove_match_route,
            self.read_deployment,
            self.update_deployment,
            self.restore_deployment,
            self.wait_for_pods,
        ]
