"""Simulated apps for the benchmarks: objects written through the official client, as `kubectl
apply` would, in the shapes tidegate itself creates (its own manifest builders)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from kubernetes.aio import client as kube_client

from activities.kubernetes import (
    ISTIO_GROUP,
    ISTIO_VERSION,
    deployment_manifest,
    destination_rule_manifest,
    virtual_service_manifest,
)
from bench.stack import Stack
from deploy_models import IstioTarget, WorkloadSpec

NAMESPACE = "default"
REPLICAS = 3
PORT = 8080


def workload(app: str, version: str, image: str, name: str | None = None) -> WorkloadSpec:
    return WorkloadSpec(
        namespace=NAMESPACE, name=name or f"{app}-{'stable' if version == 'v1' else 'canary'}", app=app,
        version=version, image=image, replicas=REPLICAS, container_port=PORT, progress_deadline_seconds=600,
    )


def istio_target(app: str) -> IstioTarget:
    return IstioTarget(
        namespace=NAMESPACE, app=app, host=app, virtual_service=app, destination_rule=app,
        stable_subset="v1", canary_subset="v2",
    )


def service_manifest(app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "namespace": NAMESPACE, "labels": {"app": app}},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    }


async def create_stable(api: kube_client.ApiClient, app: str, image: str | None = None) -> None:
    """`{app}-stable` (version v1) running `image` (default `{app}:1.0`): what a canary starts from."""
    apps = kube_client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NAMESPACE, deployment_manifest(workload(app, "v1", image or f"{app}:1.0")))


async def create_seed_workloads(api: kube_client.ApiClient, app: str, canary_image: str) -> None:
    """The seed's canary setup, part one: the stable (v1) and canary (v2) Deployments."""
    apps = kube_client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NAMESPACE, deployment_manifest(workload(app, "v1", f"{app}:1.0")))
    await apps.create_namespaced_deployment(NAMESPACE, deployment_manifest(workload(app, "v2", canary_image)))


async def create_seed_routing(api: kube_client.ApiClient, app: str) -> None:
    """Part two, once the pods are ready (no request ever finds none): the Service, the
    DestinationRule (subsets v1/v2) and the VirtualService (all on v1), as the seed's YAML has them."""
    core, custom = kube_client.CoreV1Api(api), kube_client.CustomObjectsApi(api)
    target = istio_target(app)
    await core.create_namespaced_service(NAMESPACE, service_manifest(app))
    routing = (("destinationrules", destination_rule_manifest(target)), ("virtualservices", virtual_service_manifest(target)))
    for plural, body in routing:
        await custom.create_namespaced_custom_object(ISTIO_GROUP, ISTIO_VERSION, NAMESPACE, plural, body)


async def gather_limited(calls: Iterable[Any], limit: int = 16) -> list[Any]:
    """Await coroutines `limit` at a time (the emulator serves one request at a time anyway)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with semaphore:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def wait_ready(stack: Stack, names: Iterable[str], timeout: float = 120.0) -> None:
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        pending = {name for name in pending if not stack.deployment_ready(name)}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} Deployment(s) not ready after {timeout}s, e.g. {sorted(pending)[:3]}")
        await asyncio.sleep(0.2)
