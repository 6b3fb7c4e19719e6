"""The simulated cluster, exercised through the official kubernetes client over real HTTP."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kmock
import kubernetes
import kubernetes.aio
import pytest
import pytest_asyncio
from kubernetes import client

from tests.conftest import eventually
from sandbox.cluster import (
    DEPLOYMENTS,
    SERVICES,
    ClusterEmulator,
    serve_cluster,
    status_response,
    write_kubeconfig,
)

NS = 'default'
T = TypeVar('T')


@dataclass
class Cluster:
    emulator: ClusterEmulator
    url: str
    kubeconfig: Path
    api: client.ApiClient

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with serve_cluster(rollout_seconds=0.1) as (emulator, url):
        kubeconfig = tmp_path / 'kubeconfig'
        write_kubeconfig(kubeconfig, url)
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        try:
            yield Cluster(emulator, url, kubeconfig, api)
        finally:
            api.close()


async def call(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a blocking (sync client) call off the event loop that serves the emulator."""
    return await asyncio.to_thread(fn, **kwargs)


def status_of(exc: client.ApiException) -> dict[str, Any]:
    """The Kubernetes Status object of an API error (the client keeps it as a JSON string)."""
    return json.loads(exc.body)


def make_deployment(
    name: str, image: str, *, replicas: int = 1, version: str = 'v1', deadline: int | None = None,
    sidecar: bool = False,
) -> client.V1Deployment:
    containers = [client.V1Container(name='app', image=image)]
    if sidecar:
        containers.append(client.V1Container(name='proxy', image='envoy:1'))
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={'app': name, 'team': 'core'}),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            progress_deadline_seconds=deadline,
            selector=client.V1LabelSelector(match_labels={'app': name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={'app': name, 'version': version}),
                spec=client.V1PodSpec(containers=containers),
            ),
        ),
    )


def make_service(name: str, selector: dict[str, str]) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(selector=selector, ports=[client.V1ServicePort(port=80)]),
    )


def condition(deployment: client.V1Deployment, type_: str) -> Any:
    conditions = (deployment.status.conditions if deployment.status else None) or []
    return next((c for c in conditions if c.type == type_), None)


async def rolled_out(cluster: Cluster, name: str) -> client.V1Deployment | None:
    """The deployment if its current generation is fully rolled out (kubectl-rollout-status style)."""
    dep = await call(cluster.apps.read_namespaced_deployment, name=name, namespace=NS)
    if dep.status is None:  # not yet observed by the controller
        return None
    progressing = condition(dep, 'Progressing')
    spec_replicas = dep.spec.replicas
    done = (
        dep.status.observed_generation == dep.metadata.generation
        and progressing is not None and progressing.reason == 'NewReplicaSetAvailable'
        and (dep.status.updated_replicas or 0) == spec_replicas
        and (dep.status.replicas or 0) == spec_replicas
        and (dep.status.available_replicas or 0) == spec_replicas
    )
    return dep if done else None


@pytest.mark.asyncio
async def test_create_and_read_deployment_and_service(cluster: Cluster) -> None:
    created = await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp is not None
    assert meta.resource_version.isdigit() and meta.generation == 1
    assert created.spec.progress_deadline_seconds == 600  # defaulted like the real API server

    read = await call(cluster.apps.read_namespaced_deployment, name='web', namespace=NS)
    assert read.metadata.uid == meta.uid
    assert read.spec.template.spec.containers[0].image == 'app:v1'

    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    assert err.value.status == 409 and status_of(err.value)['reason'] == 'AlreadyExists'

    svc = await call(cluster.core.create_namespaced_service, namespace=NS, body=make_service('web', {'app': 'web'}))
    assert int(svc.metadata.resource_version) > int(meta.resource_version)
    services = await call(cluster.core.list_namespaced_service, namespace=NS)
    assert [s.metadata.name for s in services.items] == ['web']

    selected = await call(cluster.apps.list_namespaced_deployment, namespace=NS, label_selector='app=web,team')
    assert [d.metadata.name for d in selected.items] == ['web']
    assert (await call(cluster.apps.list_namespaced_deployment, namespace=NS, label_selector='app!=web')).items == []

    stored = cluster.emulator.get('deployments', NS, 'web')
    assert stored is not None and stored['metadata']['uid'] == meta.uid
    assert cluster.emulator.get(DEPLOYMENTS, NS, 'web') == cluster.emulator.get('apps/v1/deployments', NS, 'web')
    assert cluster.emulator.get(SERVICES, NS, 'nope') is None
    assert cluster.emulator.objects[DEPLOYMENTS, NS, 'web'] >= {'metadata': {'name': 'web'}}


@pytest.mark.asyncio
async def test_declared_resources_are_listable_when_empty(cluster: Cluster) -> None:
    for plural in ['virtualservices', 'destinationrules']:
        listing = await call(
            cluster.custom.list_namespaced_custom_object,
            group='networking.istio.io', version='v1', namespace=NS, plural=plural,
        )
        assert listing['items'] == []
    assert (await call(cluster.apps.list_namespaced_deployment, namespace=NS)).items == []
    assert (await call(cluster.core.list_namespace)).items == []

    groups = await call(client.ApisApi(cluster.api).get_api_versions)
    assert {'apps', 'networking.istio.io'} <= {g.name for g in groups.groups}

    vs = {
        'apiVersion': 'networking.istio.io/v1', 'kind': 'VirtualService',
        'metadata': {'name': 'web'}, 'spec': {'hosts': ['web'], 'http': [{'route': []}]},
    }
    created = await call(
        cluster.custom.create_namespaced_custom_object,
        group='networking.istio.io', version='v1', namespace=NS, plural='virtualservices', body=vs,
    )
    assert created['metadata']['generation'] == 1
    ns = await call(cluster.core.create_namespace, body=client.V1Namespace(metadata=client.V1ObjectMeta(name='apps')))
    assert ns.status.phase == 'Active'
    assert cluster.emulator.get('namespaces', None, 'apps') is not None
    assert (await call(cluster.core.read_namespace, name='apps')).metadata.uid == ns.metadata.uid
    await call(cluster.core.delete_namespace, name='apps')
    assert cluster.emulator.get('namespaces', None, 'apps') is None


@pytest.mark.asyncio
async def test_resource_version_and_generation_bumps(cluster: Cluster) -> None:
    created = await call(
        cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1', sidecar=True))
    await eventually(lambda: rolled_out(cluster, 'web'), 'the initial rollout')

    # A dict body without _content_type goes as a strategic merge patch.
    labelled = await call(
        cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body={'metadata': {'labels': {'x': 'y'}}})
    assert list(cluster.emulator)[-1].headers['Content-Type'] == 'application/strategic-merge-patch+json'
    assert int(labelled.metadata.resource_version) > int(created.metadata.resource_version)
    assert labelled.metadata.generation == 1 and labelled.metadata.labels['x'] == 'y'

    # Containers are merged by name: the sidecar survives an image change of the app.
    body = {'spec': {'template': {'spec': {'containers': [{'name': 'app', 'image': 'app:v2'}]}}}}
    updated = await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=body)
    assert updated.metadata.generation == 2
    assert [(c.name, c.image) for c in updated.spec.template.spec.containers] == [
        ('app', 'app:v2'), ('proxy', 'envoy:1')]
    assert int(updated.metadata.resource_version) > int(labelled.metadata.resource_version)

    # A no-op write changes nothing, the resourceVersion included (as kube-apiserver does).
    current = await eventually(lambda: rolled_out(cluster, 'web'), 'the second rollout')
    again = await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=body)
    assert again.metadata.resource_version == current.metadata.resource_version


@pytest.mark.asyncio
async def test_merge_patch_deletes_with_null_and_replaces_lists(cluster: Cluster) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1', sidecar=True))
    body = {
        'metadata': {'labels': {'team': None}},
        'spec': {'template': {'spec': {'containers': [{'name': 'app', 'image': 'app:v2'}]}}},
    }
    patched = await call(
        cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=body,
        _content_type='application/merge-patch+json',
    )
    assert list(cluster.emulator)[-1].headers['Content-Type'] == 'application/merge-patch+json'
    assert patched.metadata.labels == {'app': 'web'}
    assert [c.name for c in patched.spec.template.spec.containers] == ['app']  # replaced wholesale

    before = cluster.emulator.get(DEPLOYMENTS, NS, 'web')
    assert before is not None
    stale = {'metadata': {'resourceVersion': '1', 'labels': {'x': 'y'}}}
    with pytest.raises(client.ApiException) as err:
        await call(
            cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=stale,
            _content_type='application/merge-patch+json',
        )
    assert err.value.status == 409 and status_of(err.value)['reason'] == 'Conflict'
    assert 'x' not in cluster.emulator.get(DEPLOYMENTS, NS, 'web')['metadata']['labels']


@pytest.mark.asyncio
async def test_json_patch_with_resource_version_test_op(cluster: Cluster) -> None:
    created = await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    rv = created.metadata.resource_version
    ops = [
        {'op': 'test', 'path': '/metadata/resourceVersion', 'value': rv},
        {'op': 'replace', 'path': '/spec/replicas', 'value': 3},
    ]
    patched = await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=ops)
    assert list(cluster.emulator)[-1].headers['Content-Type'] == 'application/json-patch+json'
    assert patched.spec.replicas == 3 and patched.metadata.generation == 2

    before = cluster.emulator.get(DEPLOYMENTS, NS, 'web')
    ops[1]['value'] = 5
    with pytest.raises(client.ApiException) as err:  # the same test op, now against a stale version
        await call(
            cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=ops,
            _content_type='application/json-patch+json',
        )
    assert err.value.status == 422
    status = status_of(err.value)
    assert status['kind'] == 'Status' and status['reason'] == 'Invalid' and status['code'] == 422
    assert status['message'] == 'the server rejected our request due to an error in our request'
    after = cluster.emulator.get(DEPLOYMENTS, NS, 'web')
    assert after is not None and before is not None
    assert after['spec']['replicas'] == 3
    assert after['metadata']['generation'] == before['metadata']['generation']


@pytest.mark.asyncio
async def test_put_replaces_with_optimistic_concurrency(cluster: Cluster) -> None:
    created = await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    fresh = await call(cluster.apps.read_namespaced_deployment, name='web', namespace=NS)
    fresh.spec.replicas = 4
    replaced = await call(cluster.apps.replace_namespaced_deployment, name='web', namespace=NS, body=fresh)
    assert replaced.spec.replicas == 4 and replaced.metadata.generation == 2
    assert replaced.metadata.uid == created.metadata.uid
    assert replaced.metadata.creation_timestamp == created.metadata.creation_timestamp

    created.spec.replicas = 7  # still carries the first resourceVersion
    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.replace_namespaced_deployment, name='web', namespace=NS, body=created)
    assert err.value.status == 409 and status_of(err.value)['reason'] == 'Conflict'
    assert cluster.emulator.get(DEPLOYMENTS, NS, 'web')['spec']['replicas'] == 4

    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.replace_namespaced_deployment, name='nope', namespace=NS,
                   body=make_deployment('nope', 'app:v1'))
    assert err.value.status == 404 and status_of(err.value)['reason'] == 'NotFound'


@pytest.mark.asyncio
async def test_delete(cluster: Cluster) -> None:
    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.delete_namespaced_deployment, name='nope', namespace=NS)
    assert err.value.status == 404
    assert status_of(err.value)['reason'] == 'NotFound'
    assert status_of(err.value)['message'] == 'deployments.apps "nope" not found'

    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    result = await call(cluster.apps.delete_namespaced_deployment, name='web', namespace=NS)
    assert result['status'] == 'Success'  # typed as `object`: a plain dict in kubernetes 37
    assert cluster.emulator.get(DEPLOYMENTS, NS, 'web') is None
    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.read_namespaced_deployment, name='web', namespace=NS)
    assert err.value.status == 404


@pytest.mark.asyncio
async def test_status_subresource_changes_only_status(cluster: Cluster) -> None:
    await call(cluster.core.create_namespaced_service, namespace=NS, body=make_service('web', {'app': 'web'}))
    body = {
        'spec': {'selector': {'app': 'other'}},
        'status': {'loadBalancer': {'ingress': [{'ip': '10.0.0.1'}]}},
    }
    patched = await call(cluster.core.patch_namespaced_service_status, name='web', namespace=NS, body=body)
    assert patched.spec.selector == {'app': 'web'}
    assert patched.status.load_balancer.ingress[0].ip == '10.0.0.1'
    assert patched.metadata.generation == 1

    # Writes to the main resource ignore the status.
    body = {'metadata': {'labels': {'x': 'y'}}, 'status': {'loadBalancer': {}}}
    patched = await call(cluster.core.patch_namespaced_service, name='web', namespace=NS, body=body)
    assert patched.status.load_balancer.ingress[0].ip == '10.0.0.1'


@pytest.mark.asyncio
@pytest.mark.parametrize('code', [409, 429, 500])
async def test_injected_faults_leave_state_unchanged(cluster: Cluster, code: int) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    await eventually(lambda: rolled_out(cluster, 'web'), 'the initial rollout')
    before = cluster.emulator.get(DEPLOYMENTS, NS, 'web')

    patches = cluster.emulator['patch', DEPLOYMENTS]
    patches[len(patches):len(patches) + 2] << status_response(code, retry_after=1 if code == 429 else None)

    for _ in range(2):
        with pytest.raises(client.ApiException) as err:
            await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS,
                       body={'spec': {'replicas': 3}})
        assert err.value.status == code
        assert status_of(err.value)['code'] == code
        if code == 429:
            assert err.value.headers['Retry-After'] == '1'
        assert cluster.emulator.get(DEPLOYMENTS, NS, 'web') == before

    patched = await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS,
                         body={'spec': {'replicas': 3}})
    assert patched.spec.replicas == 3 and patched.metadata.generation == 2


@pytest.mark.asyncio
async def test_injected_faults_in_other_forms(cluster: Cluster) -> None:
    created = await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    puts = cluster.emulator['put', DEPLOYMENTS]
    puts[len(puts):len(puts) + 1] << 409  # a bare status code: an empty body
    deletes = cluster.emulator['delete', DEPLOYMENTS]
    deletes[len(deletes):len(deletes) + 1] << kmock.KubernetesError(500, 'InternalError', 'etcd is down')

    created.spec.replicas = 2
    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.replace_namespaced_deployment, name='web', namespace=NS, body=created)
    assert err.value.status == 409 and not err.value.body
    with pytest.raises(client.ApiException) as err:
        await call(cluster.apps.delete_namespaced_deployment, name='web', namespace=NS)
    assert err.value.status == 500 and status_of(err.value)['message'] == 'etcd is down'

    stored = cluster.emulator.get(DEPLOYMENTS, NS, 'web')
    assert stored is not None and stored['spec']['replicas'] == 1
    await call(cluster.apps.delete_namespaced_deployment, name='web', namespace=NS)
    assert cluster.emulator.get(DEPLOYMENTS, NS, 'web') is None


@pytest.mark.asyncio
async def test_deployment_status_converges(cluster: Cluster) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS,
               body=make_deployment('web', 'app:v1', replicas=2))
    dep = await eventually(lambda: rolled_out(cluster, 'web'), 'the initial rollout')
    assert dep.status.ready_replicas == 2 and dep.status.observed_generation == 1
    assert condition(dep, 'Available').status == 'True'

    body = {'spec': {'template': {'spec': {'containers': [{'name': 'app', 'image': 'app:v2'}]}}}}
    await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=body)
    dep = await eventually(lambda: rolled_out(cluster, 'web'), 'the v2 rollout')
    assert dep.metadata.generation == 2 and dep.status.observed_generation == 2

    scale = await call(cluster.apps.patch_namespaced_deployment_scale, name='web', namespace=NS,
                       body={'spec': {'replicas': 0}})
    assert scale.spec.replicas == 0
    dep = await eventually(lambda: rolled_out(cluster, 'web'), 'the scale-down')
    assert dep.metadata.generation == 3
    assert not dep.status.replicas and not dep.status.ready_replicas and not dep.status.available_replicas


@pytest.mark.asyncio
async def test_crashing_image_exceeds_progress_deadline(cluster: Cluster) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS,
               body=make_deployment('web', 'app:v1-crash', deadline=1))

    async def deadline_exceeded() -> client.V1Deployment | None:
        dep = await call(cluster.apps.read_namespaced_deployment, name='web', namespace=NS)
        progressing = condition(dep, 'Progressing')
        return dep if progressing is not None and progressing.reason == 'ProgressDeadlineExceeded' else None

    dep = await eventually(deadline_exceeded, 'ProgressDeadlineExceeded')
    assert condition(dep, 'Progressing').status == 'False'
    assert condition(dep, 'Available').status == 'False'
    assert not dep.status.ready_replicas and dep.status.updated_replicas == 1


@pytest.mark.asyncio
async def test_service_proxy(cluster: Cluster) -> None:
    proxy = f'{cluster.url}/api/v1/namespaces/{NS}/services'
    await call(cluster.core.create_namespaced_service, namespace=NS, body=make_service('web', {'app': 'web'}))
    async with aiohttp.ClientSession() as http:
        async with http.get(f'{proxy}/web:80/proxy/health') as resp:
            assert resp.status == 503 and (await resp.json())['reason'] == 'ServiceUnavailable'
        async with http.get(f'{proxy}/nope:80/proxy/health') as resp:
            assert resp.status == 404

        await call(cluster.apps.create_namespaced_deployment, namespace=NS,
                   body=make_deployment('web', 'app:v1', version='v1'))

        async def health() -> tuple[int, str] | None:
            async with http.get(f'{proxy}/web:80/proxy/health') as resp:
                return (resp.status, await resp.text()) if resp.status != 503 else None

        assert await eventually(health, 'ready endpoints') == (200, 'ok')
        async with http.get(f'{proxy}/web/proxy/version') as resp:
            assert resp.status == 200
            assert await resp.json() == {'deployment': 'web', 'image': 'app:v1', 'version': 'v1', 'path': '/version'}

        # The official client's proxy call answers the body as a string.
        text = await call(cluster.core.connect_get_namespaced_service_proxy_with_path,
                          name='web:80', namespace=NS, path='health')
        assert text == 'ok'

        body = {'spec': {'template': {
            'metadata': {'labels': {'version': 'v2'}},
            'spec': {'containers': [{'name': 'app', 'image': 'app:v2-unhealthy'}]},
        }}}
        await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=body)
        assert await eventually(lambda: _unhealthy(http, f'{proxy}/web:80/proxy/health'), 'the unhealthy v2') == 500

        cluster.emulator.is_image_healthy = lambda image: True
        async with http.get(f'{proxy}/web:80/proxy/health') as resp:
            assert resp.status == 200


async def _unhealthy(http: aiohttp.ClientSession, url: str) -> int | None:
    async with http.get(url) as resp:
        return resp.status if resp.status == 500 else None


@pytest.mark.asyncio
async def test_old_pods_keep_serving_during_a_failed_rollout(cluster: Cluster) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    await eventually(lambda: rolled_out(cluster, 'web'), 'the initial rollout')
    body = {'spec': {'template': {'spec': {'containers': [{'name': 'app', 'image': 'app:v2-crash'}]}}}}
    await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body=body)

    async def observed() -> client.V1Deployment | None:
        dep = await call(cluster.apps.read_namespaced_deployment, name='web', namespace=NS)
        return dep if dep.status.observed_generation == 2 else None

    dep = await eventually(observed, 'generation 2 observed')
    assert (dep.status.replicas, dep.status.updated_replicas, dep.status.ready_replicas) == (2, 1, 1)
    assert condition(dep, 'Progressing').reason == 'ReplicaSetUpdated'
    assert await rolled_out(cluster, 'web') is None


@pytest.mark.asyncio
async def test_watch_streams_modifications(cluster: Cluster) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))

    def watch() -> list[tuple[str, str]]:
        stream = kubernetes.watch.Watch().stream(
            cluster.apps.list_namespaced_deployment, namespace=NS, timeout_seconds=1)
        return [(event['type'], event['object'].metadata.resource_version) for event in stream]

    watching = asyncio.create_task(asyncio.to_thread(watch))

    async def connected() -> bool:
        return cluster.emulator.watchers(DEPLOYMENTS) > 0

    await eventually(connected, 'the watch to connect')
    await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body={'spec': {'replicas': 2}})
    events = await asyncio.wait_for(watching, timeout=5)
    assert events[0][0] == 'ADDED'
    assert 'MODIFIED' in {kind for kind, _ in events[1:]}
    versions = [int(rv) for _, rv in events[1:]]
    assert versions == sorted(versions)

    # A watch resumed from a resourceVersion replays only what changed after it.
    latest = cluster.emulator.resource_version
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('api', 'app:v1'))
    resumed = await call(
        lambda: [(e['type'], e['object'].metadata.name) for e in kubernetes.watch.Watch().stream(
            cluster.apps.list_namespaced_deployment, namespace=NS, resource_version=str(latest), timeout_seconds=1)])
    assert [kind for kind, name in resumed if name == 'api'][0] == 'ADDED'
    assert ('ADDED', 'web') not in resumed


@pytest.mark.asyncio
async def test_aio_client(cluster: Cluster) -> None:
    api = await kubernetes.aio.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    async with api:
        apps = kubernetes.aio.client.AppsV1Api(api)
        # kubernetes.aio has its own model classes and rejects the sync client's: send a dict.
        body = client.ApiClient().sanitize_for_serialization(make_deployment('web', 'app:v1'))
        created = await apps.create_namespaced_deployment(namespace=NS, body=body)
        assert created.metadata.generation == 1
        patched = await apps.patch_namespaced_deployment(
            name='web', namespace=NS, body={'metadata': {'labels': {'team': None}}},
            _content_type='application/merge-patch+json',
        )
        assert patched.metadata.labels == {'app': 'web'}
        ops = [{'op': 'test', 'path': '/metadata/resourceVersion', 'value': created.metadata.resource_version}]
        with pytest.raises(kubernetes.aio.client.ApiException) as err:
            await apps.patch_namespaced_deployment(name='web', namespace=NS, body=ops)
        assert err.value.status == 422 and json.loads(err.value.body)['reason'] == 'Invalid'
        with pytest.raises(kubernetes.aio.client.ApiException) as err:
            await apps.read_namespaced_deployment(name='nope', namespace=NS)
        assert err.value.status == 404


@pytest.mark.asyncio
async def test_kubeconfig_loads_in_both_clients(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / 'other-kubeconfig'
    write_kubeconfig(path, cluster.url, namespace='tidegate')
    sync_config = client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=sync_config)
    assert sync_config.host == cluster.url
    _, active = kubernetes.config.list_kube_config_contexts(config_file=str(path))
    assert active['context']['namespace'] == 'tidegate'

    aio_config = kubernetes.aio.client.Configuration()
    await kubernetes.aio.config.load_kube_config(config_file=str(path), client_configuration=aio_config)
    assert aio_config.host == cluster.url


@pytest.mark.asyncio
async def test_held_write_applies_after_release_even_if_its_client_left(cluster: Cluster) -> None:
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('web', 'app:v1'))
    await call(cluster.apps.create_namespaced_deployment, namespace=NS, body=make_deployment('api', 'app:v1'))
    path = f'/apis/apps/v1/namespaces/{NS}/deployments/web'
    with cluster.emulator.hold('PATCH', path) as gate:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(asyncio.TimeoutError):  # the client gives up (as a killed one would)
                await session.patch(
                    cluster.url + path, json={'spec': {'replicas': 3}},
                    headers={'Content-Type': 'application/merge-patch+json'},
                    timeout=aiohttp.ClientTimeout(total=0.5),
                )
        assert gate.arrived.is_set() and [r.data for r in gate.held] == [{'spec': {'replicas': 3}}]
        # only that method on that path waits: reads of it and writes elsewhere go through
        assert (await call(cluster.apps.read_namespaced_deployment, name='web', namespace=NS)).spec.replicas == 1
        await call(cluster.apps.patch_namespaced_deployment, name='api', namespace=NS, body={'spec': {'replicas': 2}})
        assert cluster.emulator.get(DEPLOYMENTS, NS, 'api')['spec']['replicas'] == 2

    async def applied() -> bool:
        return cluster.emulator.get(DEPLOYMENTS, NS, 'web')['spec']['replicas'] == 3

    await eventually(applied, 'the held PATCH to be applied after its release')
    # once released, later requests are not held
    patched = await call(cluster.apps.patch_namespaced_deployment, name='web', namespace=NS, body={'spec': {'replicas': 4}})
    assert patched.spec.replicas == 4 and len(gate.held) == 1
