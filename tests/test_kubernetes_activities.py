"""Kubernetes activities through the official client over HTTP, against the emulated cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.kubernetes import KubernetesActivities, deployment_manifest, weighted_route
from deploy_models import (
    DeploymentRestore,
    DeploymentSnapshot,
    DeploymentTarget,
    DeploymentUpdate,
    IstioTarget,
    MatchRoute,
    PodsWait,
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
    kube.fail_next("put", DEPLOYMENTS, status_response(409, "Conflict", "the object has been modified"), times=3)
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
    # an edit to the very weight of the next step is someone else's too (on a first attempt)
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=50, expected=5))
    assert caught.value.type == "ConcurrentEdit"
    # a check (the weight unchanged) reads and compares: equal passes, different is caught
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=5, expected=5))
    assert caught.value.type == "ConcurrentEdit"
    assert await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=50, expected=50)) == 50
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


# -- A/B: the match route -------------------------------------------------------------------

AB_ROUTE = MatchRoute(
    target=TARGET,
    name="tidegate-ab-myapp",
    match=[{"headers": {"canary": {"exact": "true"}}}, {"headers": {"cookie": {"regex": "^(.*;\\s*)?variant=b(;.*)?$"}}}],
)


def virtual_service(kube: Kube) -> dict[str, Any]:
    found = kube.emulator.get(VIRTUALSERVICES, NS, "myapp")
    assert found is not None
    return found


async def test_match_route_is_inserted_first_and_removed_exactly(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.ensure_routing, TARGET)
    await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=10, expected=0))
    before = virtual_service(kube)["spec"]

    await kube.run(acts.add_match_route, AB_ROUTE)
    version = virtual_service(kube)["metadata"]["resourceVersion"]
    await kube.run(acts.add_match_route, AB_ROUTE)  # a retry after success: nothing written
    assert virtual_service(kube)["metadata"]["resourceVersion"] == version
    http = virtual_service(kube)["spec"]["http"]
    assert http[0] == {
        "name": "tidegate-ab-myapp",
        "match": AB_ROUTE.match,
        "route": [{"destination": {"host": "myapp", "subset": "v2"}, "weight": 100}],
    }
    assert http[1:] == before["http"]
    # the primary route is still found, and its weights still move, with the match route first
    await kube.run(acts.set_canary_weight, WeightChange(target=TARGET, weight=0, expected=10))

    assert await kube.run(acts.remove_match_route, AB_ROUTE) is True
    assert virtual_service(kube)["spec"]["http"] == [
        {**before["http"][0], "route": weighted_route(before["http"][0]["route"], TARGET, 0)}
    ]
    assert await kube.run(acts.remove_match_route, AB_ROUTE) is False  # already gone


async def test_removal_keeps_what_others_changed_meanwhile(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.ensure_routing, TARGET)
    await kube.run(acts.add_match_route, AB_ROUTE)
    other = {"name": "ops-debug", "match": [{"headers": {"x-debug": {"exact": "1"}}}], "route": route_of(kube, 1)}
    await acts.custom.patch_namespaced_custom_object(
        group="networking.istio.io", version="v1", namespace=NS, plural="virtualservices", name="myapp",
        body=[{"op": "add", "path": "/spec/http/1", "value": other}],
        _content_type="application/json-patch+json",
    )
    assert await kube.run(acts.remove_match_route, AB_ROUTE) is True
    http = virtual_service(kube)["spec"]["http"]
    assert [r["name"] for r in http] == ["ops-debug", "primary"] and http[0] == other


async def test_match_route_conflicts_are_retryable_and_change_nothing(kube: Kube) -> None:
    acts = kube.activities
    await kube.run(acts.ensure_routing, TARGET)
    before = virtual_service(kube)["spec"]
    kube.fail_next("patch", VIRTUALSERVICES, status_response(409, "Conflict", "injected"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.add_match_route, AB_ROUTE)
    assert not caught.value.non_retryable and "409" in caught.value.message
    assert virtual_service(kube)["spec"] == before
    await kube.run(acts.add_match_route, AB_ROUTE)
    kube.fail_next("patch", VIRTUALSERVICES, status_response(422, "Invalid", "the test operation failed"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.remove_match_route, AB_ROUTE)
    assert not caught.value.non_retryable  # a failed `test`: re-read and try again
    assert virtual_service(kube)["spec"]["http"][0]["name"] == "tidegate-ab-myapp"


async def test_match_route_needs_the_virtual_service(kube: Kube) -> None:
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.add_match_route, AB_ROUTE)
    assert caught.value.non_retryable and "does not exist" in caught.value.message
    assert await kube.run(kube.activities.remove_match_route, AB_ROUTE) is False


# -- Rolling and recreate: the app's own Deployment, in place --------------------------------

APP = DeploymentTarget(namespace=NS, name="myapp", app="myapp")


def template_of(kube: Kube, name: str = "myapp") -> dict[str, Any]:
    found = kube.emulator.get(DEPLOYMENTS, NS, name)
    assert found is not None
    return found["spec"]["template"]


async def users_deployment(kube: Kube, image: str = "myapp:1.0") -> DeploymentSnapshot:
    """The app's own Deployment, ready, recorded as a run records it."""
    await kube.run(kube.activities.apply_deployment, workload(image, name="myapp", version="v1"))
    await kube.run(kube.activities.wait_for_rollout, wait("myapp"))
    snapshot = await kube.run(kube.activities.read_deployment, APP)
    assert snapshot is not None
    return snapshot


async def test_rolling_update_records_patches_and_restores_exactly(kube: Kube) -> None:
    acts = kube.activities
    assert await kube.run(acts.read_deployment, APP) is None  # missing: a first deployment
    snapshot = await users_deployment(kube)
    assert (snapshot.image, snapshot.replicas, snapshot.container, snapshot.version) == ("myapp:1.0", 3, "myapp", "v1")
    assert snapshot.strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}

    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    update = DeploymentUpdate(snapshot=snapshot, image="myapp:2.0", strategy=strategy)
    await kube.run(acts.update_deployment, update)
    stored = kube.emulator.get(DEPLOYMENTS, NS, "myapp")
    await kube.run(acts.update_deployment, update)  # a retry after success: nothing written
    # (the controller's status writes move resourceVersion on; the spec and its generation stay)
    again = kube.emulator.get(DEPLOYMENTS, NS, "myapp")
    assert again["metadata"]["generation"] == stored["metadata"]["generation"] and again["spec"] == stored["spec"]
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "myapp:2.0"
    assert stored["spec"]["strategy"] == strategy and stored["spec"]["replicas"] == 3
    assert (await kube.run(acts.wait_for_rollout, wait("myapp"))).complete

    outcome = await kube.run(acts.restore_deployment, DeploymentRestore(snapshot=snapshot, applied_image="myapp:2.0"))
    assert outcome.restored and "template" in outcome.message and "strategy" in outcome.message
    restored = kube.emulator.get(DEPLOYMENTS, NS, "myapp")["spec"]
    assert restored["template"] == snapshot.template and restored["strategy"] == snapshot.strategy
    assert (await kube.run(acts.restore_deployment, DeploymentRestore(snapshot=snapshot, applied_image="myapp:2.0"))).restored


async def test_crash_looping_rollout_fails_and_the_undo_completes(kube: Kube) -> None:
    acts = kube.activities
    snapshot = await users_deployment(kube)
    await kube.run(acts.update_deployment, DeploymentUpdate(snapshot=snapshot, image="myapp:2.0-crash"))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.wait_for_rollout, wait("myapp", seconds=0.5))
    assert caught.value.type == "RolloutFailed" and caught.value.non_retryable

    await kube.run(acts.restore_deployment, DeploymentRestore(snapshot=snapshot, applied_image="myapp:2.0-crash"))
    state = await kube.run(acts.wait_for_rollout, wait("myapp"))  # the rollback itself is complete
    assert state.complete and template_of(kube) == snapshot.template


async def test_someone_elses_template_is_never_overwritten(kube: Kube) -> None:
    acts = kube.activities
    snapshot = await users_deployment(kube)
    await acts.apps.patch_namespaced_deployment(
        name="myapp", namespace=NS, _content_type="application/json-patch+json",
        body=[{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "myapp:1.0-hotfix"}],
    )
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.update_deployment, DeploymentUpdate(snapshot=snapshot, image="myapp:2.0"))
    assert caught.value.type == "ConcurrentEdit" and caught.value.non_retryable
    outcome = await kube.run(acts.restore_deployment, DeploymentRestore(snapshot=snapshot, applied_image="myapp:2.0"))
    assert not outcome.restored and "someone else" in outcome.message
    assert template_of(kube)["spec"]["containers"][0]["image"] == "myapp:1.0-hotfix"


async def test_deployment_patch_conflict_is_retryable_and_changes_nothing(kube: Kube) -> None:
    acts = kube.activities
    snapshot = await users_deployment(kube)
    kube.fail_next("patch", DEPLOYMENTS, status_response(409, "Conflict", "the object has been modified"))
    update = DeploymentUpdate(snapshot=snapshot, image="myapp:2.0")
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.update_deployment, update)
    assert not caught.value.non_retryable and "409" in caught.value.message
    assert template_of(kube) == snapshot.template
    await kube.run(acts.update_deployment, update)  # the retry succeeds
    assert template_of(kube)["spec"]["containers"][0]["image"] == "myapp:2.0"


async def test_recreate_waits_observe_when_pods_went_and_came(kube: Kube) -> None:
    acts = kube.activities
    snapshot = await users_deployment(kube)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=10)
    poll = timedelta(milliseconds=20)
    await kube.run(acts.update_deployment, DeploymentUpdate(snapshot=snapshot, replicas=0))
    gone = await kube.run(acts.wait_for_pods, PodsWait(namespace=NS, name="myapp", until="gone", deadline=deadline, poll_interval=poll))
    assert gone.replicas == 0 and gone.message == "0 pod(s) left"

    await kube.run(acts.update_deployment, DeploymentUpdate(snapshot=snapshot, image="myapp:2.0", replicas=3))
    first = await kube.run(acts.wait_for_pods, PodsWait(namespace=NS, name="myapp", until="firstReady", deadline=deadline, poll_interval=poll))
    assert first.ready_replicas >= 1
    # the emulator's pods become ready 0.1 s after the change: the observed gap is that, give or take a poll
    assert timedelta(seconds=0.05) <= first.at - gone.at <= timedelta(seconds=3)


async def test_a_new_version_that_never_gets_ready_fails_at_the_deadline(kube: Kube) -> None:
    acts = kube.activities
    snapshot = await users_deployment(kube)
    def pods(until: str, seconds: float) -> PodsWait:
        deadline = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return PodsWait(namespace=NS, name="myapp", until=until, deadline=deadline, poll_interval=timedelta(milliseconds=20))

    await kube.run(acts.update_deployment, DeploymentUpdate(snapshot=snapshot, replicas=0))
    await kube.run(acts.wait_for_pods, pods("gone", 10))
    await kube.run(acts.update_deployment, DeploymentUpdate(snapshot=snapshot, image="myapp:2.0-crash", replicas=3))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(acts.wait_for_pods, pods("firstReady", 0.5))
    assert caught.value.type == "RolloutFailed" and "0 of 3 pod(s) ready" in caught.value.message
    outcome = await kube.run(acts.restore_deployment, DeploymentRestore(snapshot=snapshot, applied_image="myapp:2.0-crash"))
    assert outcome.restored and "replicas" not in outcome.message  # replicas were already 3 again
    assert template_of(kube) == snapshot.template


async def test_the_container_to_update_is_chosen_or_named(kube: Kube) -> None:
    manifest = deployment_manifest(workload(name="shop", version="v1"))
    manifest["spec"]["template"]["spec"]["containers"] = [
        {"name": "proxy", "image": "envoy:1.30"},
        {"name": "web", "image": "shop:1.0"},
    ]
    await kube.activities.apps.create_namespaced_deployment(namespace=NS, body=manifest)
    target = DeploymentTarget(namespace=NS, name="shop", app="shop")
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.read_deployment, target)
    assert caught.value.non_retryable and "proxy, web" in caught.value.message and "container" in caught.value.message
    snapshot = await kube.run(kube.activities.read_deployment, target.model_copy(update={"container": "web"}))
    assert (snapshot.container, snapshot.container_index, snapshot.image) == ("web", 1, "shop:1.0")
    with pytest.raises(ApplicationError, match="has no container 'db'"):
        await kube.run(kube.activities.read_deployment, target.model_copy(update={"container": "db"}))


# -- The API refusing, the API unreachable ---------------------------------------------------


async def test_create_in_a_missing_namespace_fails_non_retryably_with_the_apis_message(kube: Kube) -> None:
    missing = workload().model_copy(update={"namespace": "ghost"})
    kube.fail_next("post", DEPLOYMENTS, status_response(404, "NotFound", 'namespaces "ghost" not found'))
    with pytest.raises(ApplicationError) as caught:
        await kube.run(kube.activities.apply_deployment, missing)
    assert caught.value.type == "KubernetesRejected" and caught.value.non_retryable
    assert caught.value.message.startswith("apply Deployment ghost/myapp-blue: 404")
    assert caught.value.message.endswith(': namespaces "ghost" not found')
    assert kube.emulator.get(DEPLOYMENTS, "ghost", "myapp-blue") is None


async def test_unreachable_api_fails_retryably(tmp_path: Path) -> None:
    """Connection refused is no answer about the request: Temporal's retry policy must apply."""
    config = tmp_path / "kubeconfig"
    write_kubeconfig(config, "http://127.0.0.1:1")  # nothing listens on port 1
    async with await kubernetes_api(str(config)) as api:
        with pytest.raises(Exception) as caught:
            await ActivityEnvironment().run(KubernetesActivities(api).apply_deployment, workload())
    assert "Connect call failed ('127.0.0.1', 1)" in str(caught.value)
    # What the worker reports to Temporal for this error, through the worker's own converter.
    failure = Failure()
    pydantic_data_converter.failure_converter.to_failure(caught.value, pydantic_data_converter.payload_converter, failure)
    assert failure.HasField("application_failure_info") and not failure.application_failure_info.non_retryable
