"""Kubernetes activities through the official client over HTTP, against the emulated cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.kubernetes import KubernetesActivities
from deploy_models import (
    IstioTarget,
    ObjectRef,
    RolloutWait,
    ScaleRequest,
    ServiceRef,
    ServiceSpec,
    ServiceSwitch,
    WeightChange,
    WorkloadSpec,
)
from sandbox.cluster import (
    DEPLOYMENTS,
    SERVICES,
    VIRTUALSERVICES,
    DESTINATIONRULES,
    ClusterEmulator,
    serve_cluster,
    status_response,
    write_kubeconfig,
)
from worker import kubernetes_api

NS = "default"


@dataclass
class Kube:
    emulator: ClusterEmulator
    activities: KubernetesActivities

    async def run(self, activity: Any, arg: Any) -> Any:
        return await ActivityEnvironment().run(activity, arg)

    def fail_next(self, verb: str, resource: Any, answer: Any, times: int = 1) -> None:
        """The next `times` requests of `verb` on `resource` get `answer` (state unchanged)."""
        view = self.emulator[verb, resource]
        view[len(view) : len(view) + times] << answer


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    async with serve_cluster(rollout_seconds=0.1) as (emulator, url):
        config = tmp_path / "kubeconfig"
        write_kubeconfig(config, url)
        async with await kubernetes_api(str(config)) as api:
            yield Kube(emulator, KubernetesActivities(api))


def workload(image: str = "myapp:1.0", name: str = "myapp-blue", version: str = "blue", deadline: int = 60) -> WorkloadSpec:
    return WorkloadSpec(
        namespace=NS, name=name, app="myapp", version=version, image=image,
        replicas=3, container_port=8080, progress_deadline_seconds=deadline,
    )


def wait(name: str = "myapp-blue", seconds: float = 10) -> RolloutWait:
    return RolloutWait(
        namespace=NS, name=name, deadline=datetime.now(timezone.utc) + timedelta(seconds=seconds),
        poll_interval=timedelta(milliseconds=50),
    )


def switch(from_version: str | None, to_version: str, name: str = "myapp") -> ServiceSwitch:
    return ServiceSwitch(namespace=NS, name=name, app="myapp", from_version=from_version, to_version=to_version, target_port=8080)


# -- Deployments ----------------------------------------------------------------------------


async def test_apply_is_idempotent_and_rollout_completes(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.apply_deployment, workload())
    await kube.run(acts.apply_deployment, workload())  # a retried activity: same state
    stored = kube.emulator.get(DEPLOYMENTS, NS, "myapp-blue")
    assert stored is not None and stored["metadata"]["generation"] == 1
    assert stored["spec"]["template"]["metadata"]["labels"] == {"app": "myapp", "version": "blue"}
    assert stored["spec"]["progressDeadlineSeconds"] == 60

    state = await kube.run(acts.wait_for_rollout, wait())
    assert state.complete and state.available_replicas == 3

    await kube.run(acts.apply_deployment, workload("myapp:1.1"))
    stored = kube.emulator.get(DEPLOYMENTS, NS, "myapp-blue")
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "myapp:1.1"
    assert (await kube.run(acts.wait_for_rollout, wait())).complete
    assert await kube.run(acts.read_deployment_image, ObjectRef(namespace=NS, name="myapp-blue")) == "myapp:1.1"


async def test_rollout_that_never_becomes_ready_fails_non_retryably(kube: Kube) -> None:
    await kube.run(kube.activities.apply_deployment, workload("myapp:2.0-crash", deadline=1))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.wait_for_rollout, wait(seconds=30))
    assert caught.value.type == "RolloutFailed" and caught.value.non_retryable
    assert "progress deadline" in caught.value.message


async def test_rollout_wait_stops_at_the_workflow_deadline(kube: Kube) -> None:
    await kube.run(kube.activities.apply_deployment, workload("myapp:2.0-crash", deadline=600))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.wait_for_rollout, wait(seconds=0.5))
    assert caught.value.type == "RolloutFailed" and "0 of 3" in caught.value.message


async def test_concurrent_replace_is_retried_not_overwritten(kube: Kube) -> None:
    await kube.run(kube.activities.apply_deployment, workload())
    kube.fail_next("put", DEPLOYMENTS, status_response(409, "Conflict", "the object has been modified"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.apply_deployment, workload("myapp:1.1"))
    assert not caught.value.non_retryable and "409" in caught.value.message
    assert kube.emulator.get(DEPLOYMENTS, NS, "myapp-blue")["spec"]["template"]["spec"]["containers"][0]["image"] == "myapp:1.0"
    await kube.run(kube.activities.apply_deployment, workload("myapp:1.1"))  # the retry succeeds


@pytest.mark.parametrize(("code", "retryable"), [(429, True), (500, True), (503, True), (403, False), (422, False)])
async def test_api_errors_map_to_retryable_or_not(kube: Kube, code: int, retryable: bool) -> None:
    kube.fail_next("post", DEPLOYMENTS, status_response(code, message=f"injected {code}"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.apply_deployment, workload())
    assert caught.value.non_retryable is not retryable
    assert f"injected {code}" in caught.value.message
    assert kube.emulator.get(DEPLOYMENTS, NS, "myapp-blue") is None


async def test_delete_and_scale_tolerate_what_is_already_done(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.delete_deployment, ObjectRef(namespace=NS, name="absent"))
    await kube.run(acts.scale_deployment, ScaleRequest(namespace=NS, name="absent", replicas=0))
    await kube.run(acts.apply_deployment, workload())
    await kube.run(acts.scale_deployment, ScaleRequest(namespace=NS, name="myapp-blue", replicas=0))
    await kube.run(acts.scale_deployment, ScaleRequest(namespace=NS, name="myapp-blue", replicas=0))
    assert kube.emulator.get(DEPLOYMENTS, NS, "myapp-blue")["spec"]["replicas"] == 0
    await kube.run(acts.delete_deployment, ObjectRef(namespace=NS, name="myapp-blue"))
    assert kube.emulator.get(DEPLOYMENTS, NS, "myapp-blue") is None
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.scale_deployment, ScaleRequest(namespace=NS, name="absent", replicas=2))
    assert caught.value.non_retryable


# -- Services -------------------------------------------------------------------------------


async def test_service_switch_creates_switches_and_is_idempotent(kube: Kube) -> None:
    acts = kube.activities
    ref = ServiceRef(namespace=NS, name="myapp")
    assert await kube.run(acts.read_service_version, ref) is None
    await kube.run(acts.switch_service, switch(None, "blue"))
    service = kube.emulator.get(SERVICES, NS, "myapp")
    assert service["spec"]["selector"] == {"app": "myapp", "version": "blue"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080}]

    await kube.run(acts.switch_service, switch("blue", "green"))
    await kube.run(acts.switch_service, switch("blue", "green"))  # retried after success
    assert await kube.run(acts.read_service_version, ref) == "green"


async def test_service_edited_by_someone_else_is_not_overwritten(kube: Kube) -> None:
    await kube.run(kube.activities.switch_service, switch(None, "blue"))
    service = kube.emulator.get(SERVICES, NS, "myapp")
    service_api = kube.activities.core
    await service_api.patch_namespaced_service(
        name="myapp", namespace=NS, body={"spec": {"selector": {"version": "red"}}},
        _content_type="application/merge-patch+json",
    )
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.switch_service, switch("blue", "green"))
    assert caught.value.type == "ConcurrentEdit" and caught.value.non_retryable
    assert "'red'" in caught.value.message
    assert kube.emulator.get(SERVICES, NS, "myapp")["spec"]["selector"]["version"] == "red"
    assert service["metadata"]["name"] == "myapp"


async def test_service_patch_conflict_is_retryable_and_changes_nothing(kube: Kube) -> None:
    await kube.run(kube.activities.switch_service, switch(None, "blue"))
    kube.fail_next("patch", SERVICES, status_response(409, "Conflict", "injected"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.switch_service, switch("blue", "green"))
    assert not caught.value.non_retryable
    assert kube.emulator.get(SERVICES, NS, "myapp")["spec"]["selector"]["version"] == "blue"


async def test_ensure_service_leaves_an_existing_one_alone(kube: Kube) -> None:
    spec = ServiceSpec(namespace=NS, name="myapp", app="myapp", selector={"app": "myapp"}, target_port=8080)
    await kube.run(kube.activities.ensure_service, spec)
    await kube.run(kube.activities.ensure_service, spec.model_copy(update={"selector": {"app": "other"}}))
    assert kube.emulator.get(SERVICES, NS, "myapp")["spec"]["selector"] == {"app": "myapp"}


# -- Istio ----------------------------------------------------------------------------------

TARGET = IstioTarget(
    namespace=NS, app="myapp", host="myapp", virtual_service="myapp", destination_rule="myapp",
    stable_subset="v1", canary_subset="v2",
)


def route_of(kube: Kube, index: int = 0) -> list[dict[str, Any]]:
    return kube.emulator.get(VIRTUALSERVICES, NS, "myapp")["spec"]["http"][index]["route"]


async def test_routing_is_created_when_missing(kube: Kube) -> None:
    assert await kube.run(kube.activities.ensure_routing, TARGET) == 0
    rule = kube.emulator.get(DESTINATIONRULES, NS, "myapp")
    assert rule["spec"]["subsets"] == [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}},
    ]
    http = kube.emulator.get(VIRTUALSERVICES, NS, "myapp")["spec"]["http"]
    assert len(http) == 1 and "match" not in http[0]  # no header route: no traffic before the smoke test
    assert [(d["destination"]["subset"], d["weight"]) for d in http[0]["route"]] == [("v1", 100), ("v2", 0)]
    assert await kube.run(kube.activities.ensure_routing, TARGET) == 0  # idempotent


async def test_weights_move_sum_to_100_and_are_read_back(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.ensure_routing, TARGET)
    for previous, weight in ((0, 5), (5, 25), (25, 25), (25, 100), (100, 0)):
        assert await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=weight, expected=previous)) == weight
        route = route_of(kube)
        assert [(d["destination"]["subset"], d["weight"]) for d in route] == [("v1", 100 - weight), ("v2", weight)]


async def test_hand_edited_weights_are_detected(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.ensure_routing, TARGET)
    await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=5, expected=0))
    await acts.custom.patch_namespaced_custom_object(
        group="networking.istio.io", version="v1", namespace=NS, plural="virtualservices", name="myapp",
        body=[{"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 50},
              {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 50}],
        _content_type="application/json-patch+json",
    )
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=25, expected=5))
    assert caught.value.type == "ConcurrentEdit" and "50%" in caught.value.message
    assert [d["weight"] for d in route_of(kube)] == [50, 50]
    # the rollback does not ask what was there: it restores 100% stable
    await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=0))
    assert [d["weight"] for d in route_of(kube)] == [100, 0]


async def test_virtual_service_conflict_is_retryable_and_changes_nothing(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.ensure_routing, TARGET)
    kube.fail_next("patch", VIRTUALSERVICES, status_response(409, "Conflict", "injected"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=5, expected=0))
    assert not caught.value.non_retryable and "409" in caught.value.message
    assert [d["weight"] for d in route_of(kube)] == [100, 0]
    await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=5, expected=0))
    assert [d["weight"] for d in route_of(kube)] == [95, 5]


async def test_route_is_chosen_by_name_when_ambiguous(kube: Kube) -> None:
    route = [{"destination": {"host": "myapp", "subset": "v1"}}]
    await kube.activities.custom.create_namespaced_custom_object(
        group="networking.istio.io", version="v1", namespace=NS, plural="virtualservices",
        body={
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "myapp", "namespace": NS},
            "spec": {"hosts": ["myapp"], "http": [{"name": "api", "route": route}, {"name": "web", "route": route}]},
        },
    )
    with pytest.raises(ApplicationError, match="name the one to edit"):
        await kube.run(kube.activities.ensure_routing, TARGET)
    named = TARGET.model_copy(update={"route": "web"})
    assert await kube.run(kube.activities.ensure_routing, named) == 0
    await kube.run(kube.activities.set_canary_weight, WeightChange(target=named, weight=10, expected=0))
    http = kube.emulator.get(VIRTUALSERVICES, NS, "myapp")["spec"]["http"]
    assert http[0]["route"] == route  # the other route is untouched
    assert [(d["destination"]["subset"], d["weight"]) for d in http[1]["route"]] == [("v1", 90), ("v2", 10)]


async def test_destination_rule_without_the_subsets_is_refused(kube: Kube) -> None:
    await kube.activities.custom.create_namespaced_custom_object(
        group="networking.istio.io", version="v1", namespace=NS, plural="destinationrules",
        body={
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "myapp", "namespace": NS},
            "spec": {"host": "myapp", "subsets": [{"name": "stable", "labels": {"track": "stable"}}]},
        },
    )
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.ensure_routing, TARGET)
    assert caught.value.non_retryable and "no subset(s) v1, v2" in caught.value.message
    assert kube.emulator.get(VIRTUALSERVICES, NS, "myapp") is None
