"""
An in-process Kubernetes API server for tests and the demo.

:class:`ClusterEmulator` extends kmock's ``KubernetesEmulator`` so that the
official ``kubernetes`` client (sync and ``kubernetes.aio``) can talk to it over
real HTTP the way tidegate talks to a real cluster: resourceVersion/generation
bookkeeping, optimistic concurrency, JSON/merge/strategic patches, PUT,
the ``status``/``scale`` subresources, a simulated Deployment controller and
a service proxy for smoke tests.

Usage::

    async with serve_cluster() as (cluster, url):
        write_kubeconfig(path, url)
        ...  # point the kubernetes client at `path`
        assert cluster.get('deployments', 'default', 'web')['status']['readyReplicas'] == 1

Fault injection uses kmock's DSL. User reactions are consulted BEFORE any state
change, so an injected error never mutates the stored objects::

    deployments = cluster['patch', DEPLOYMENTS]
    deployments << 409                                   # every PATCH fails (empty body)
    cluster['put', DEPLOYMENTS] << status_response(409)  # with a Kubernetes Status body

    # Only the next N requests: slices count over the whole request history
    # of the view, so start the slice at the current length.
    view = cluster['patch', DEPLOYMENTS]
    view[len(view):len(view) + 2] << status_response(429, retry_after=1)

    # Or raise the Status from the reaction (rendered the same way):
    view[len(view):len(view) + 1] << kmock.KubernetesError(500, 'InternalError', 'boom')

To act while a request is in flight (sent, not yet applied), hold it at a gate::

    with cluster.hold('PATCH', '/apis/apps/v1/namespaces/default/deployments/web') as gate:
        await gate.arrived.wait()  # a PATCH waits here; kill its client, say
    # leaving the block releases it: the write is applied as if nothing had happened

Deviations from a real API server worth knowing: no schema validation or
admission, no server-side apply (415), no pagination, no cascading deletion,
and a watch resumed from a resourceVersion replays the latest state of what
changed, not every intermediate event. As on the real server, no-op writes
(nothing changed) keep the resourceVersion and emit no watch event.
"""
import asyncio
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml

__all__ = [
    'ClusterEmulator',
    'DEPLOYMENTS',
    'DESTINATIONRULES',
    'Gate',
    'NAMESPACES',
    'ReadyPods',
    'SERVICES',
    'VIRTUALSERVICES',
    'default_is_image_healthy',
    'default_is_image_ready',
    'serve_cluster',
    'status_response',
    'write_kubeconfig',
]

logger = logging.getLogger(__name__)

DEPLOYMENTS = kmock.resource('apps', 'v1', 'deployments')
SERVICES = kmock.resource('', 'v1', 'services')
NAMESPACES = kmock.resource('', 'v1', 'namespaces')
VIRTUALSERVICES = kmock.resource('networking.istio.io', 'v1', 'virtualservices')
DESTINATIONRULES = kmock.resource('networking.istio.io', 'v1', 'destinationrules')
SECRETS = kmock.resource('', 'v1', 'secrets')

Key = tuple[kmock.resource, str | None, str]

_VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']
_REASONS = {
    400: 'BadRequest', 401: 'Unauthorized', 403: 'Forbidden', 404: 'NotFound',
    405: 'MethodNotAllowed', 409: 'Conflict', 410: 'Expired', 415: 'UnsupportedMediaType',
    422: 'Invalid', 429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable',
    504: 'Timeout',
}
_PATCH_TYPES = (
    'application/json-patch+json',
    'application/merge-patch+json',
    'application/strategic-merge-patch+json',
)
_HEALTH_PATHS = {'health', 'healthz'}

# kmock's URL parser reads any `/api/v1/namespaces/…` as a namespace prefix, so the cluster-scoped
# Namespace resource itself is routed through an alias plural and mapped back before handling.
_NAMESPACES_PATH = re.compile(r'/api/v1/namespaces(?:/[^/]+(?:/(?:status|finalize))?)?/?')
_NAMESPACES_ALIAS = '-namespaces-'


def _image_tag(image: str) -> str:
    """The tag of an image reference ('' if untagged)."""
    last = image.split('@', 1)[0].rsplit('/', 1)[-1]
    return last.split(':', 1)[1] if ':' in last else ''


def default_is_image_ready(image: str) -> bool:
    """Pods become ready unless the image tag ends with ``-crash``."""
    return not _image_tag(image).endswith('-crash')


def default_is_image_healthy(image: str) -> bool:
    """Health checks pass unless the image tag ends with ``-unhealthy``."""
    return not _image_tag(image).endswith('-unhealthy')


def status_response(
    code: int,
    reason: str | None = None,
    message: str | None = None,
    *,
    retry_after: int | None = None,
) -> kmock.Response:
    """A Kubernetes ``Status`` error response to feed into kmock reactions (``<<``)."""
    reason = reason or _REASONS.get(code, 'Unknown')
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if retry_after is not None:
        details['retryAfterSeconds'] = retry_after
        headers['Retry-After'] = str(retry_after)
    error = kmock.KubernetesError(code, reason, message or f'injected {code} {reason}', details)
    return kmock.Response(status=code, payload=_status_body(error), headers=headers)


def _status_body(exc: kmock.KubernetesError) -> dict[str, Any]:
    return {
        'kind': 'Status',
        'apiVersion': 'v1',
        'metadata': {},
        'status': 'Failure',
        'message': exc.message or '',
        'reason': exc.reason or _REASONS.get(exc.status, 'Unknown'),
        'details': exc.details if isinstance(exc.details, dict) else {},
        'code': exc.status,
    }


class _Reply(Exception):
    """
    A non-default response from a fallback handler, rendered afresh in ``_handle``.

    Returning a ``kmock.Response`` from a handler would make kmock copy its status
    and headers onto the (shared) fallback reaction for all later requests.
    """

    def __init__(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, headers or {}


def _qualified(resource: kmock.resource) -> str:
    return f'{resource.plural}.{resource.group}' if resource.group else f'{resource.plural}'


def _details(resource: kmock.resource, name: str) -> dict[str, Any]:
    return {'name': name, 'group': resource.group, 'kind': resource.plural}


def _not_found(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        404, 'NotFound', f'{_qualified(resource)} "{name}" not found', _details(resource, name))


def _already_exists(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        409, 'AlreadyExists', f'{_qualified(resource)} "{name}" already exists', _details(resource, name))


def _conflict(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    message = (
        f'Operation cannot be fulfilled on {_qualified(resource)} "{name}": the object has been'
        ' modified; please apply your changes to the latest version and try again'
    )
    return kmock.KubernetesError(409, 'Conflict', message, _details(resource, name))


def _bad_request(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(400, 'BadRequest', message, {})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def _header(request: kmock.Request, name: str) -> str:
    return next((val for key, val in request.headers.items() if key.lower() == name.lower()), '')


# Patches ---------------------------------------------------------------------------------------

def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``null`` deletes keys, lists are replaced wholesale."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and 'name' in i for i in value)


def _strategic_merge_patch(target: Any, patch: Any) -> Any:
    """
    An approximation of the strategic merge patch.

    Like a merge patch, except that lists of dicts with a ``name`` key
    (containers, env, ports, volumes) are merged item-by-item by name,
    and ``$patch: delete|replace`` directives are honoured; other directives
    (``$setElementOrder``, ``$retainKeys``, …) are ignored.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get('$patch') == 'replace':
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith('$')}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith('$'):
            continue
        elif value is None:
            result.pop(key, None)
        elif _is_named_list(value) and _is_named_list(result.get(key)):
            items = [copy.deepcopy(item) for item in result[key]]
            for item in value:
                index = next((i for i, old in enumerate(items) if old['name'] == item['name']), None)
                if item.get('$patch') == 'delete':
                    if index is not None:
                        del items[index]
                elif index is None:
                    items.append(_strategic_merge_patch({}, item))
                else:
                    items[index] = _strategic_merge_patch(items[index], item)
            result[key] = items
        else:
            result[key] = _strategic_merge_patch(result.get(key), value)
    return result


def _json_patch(target: dict[str, Any], patch: Any) -> Any:
    """
    RFC 6902 JSON patch, incl. ``test`` operations.

    A failing operation (e.g. a ``test`` on ``/metadata/resourceVersion``)
    answers 422 with reason ``Invalid`` and the generic message, exactly as
    kube-apiserver does: ``applyJSPatch`` in apiserver/pkg/endpoints/handlers/patch.go
    returns ``errors.NewGenericServerResponse(http.StatusUnprocessableEntity, …)``,
    which apimachinery/pkg/api/errors renders as reason ``Invalid`` and message
    "the server rejected our request due to an error in our request".
    A body that is not a JSON array is a 400 BadRequest.
    """
    if not isinstance(patch, list):
        raise _bad_request('json: cannot unmarshal object into Go value of type jsonpatch.Patch')
    try:
        return jsonpatch.JsonPatch(patch).apply(target)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
        message = 'the server rejected our request due to an error in our request'
        raise kmock.KubernetesError(422, 'Invalid', message, {})


def _apply_patch(request: kmock.Request, target: dict[str, Any]) -> Any:
    content_type = _header(request, 'Content-Type').split(';', 1)[0].strip().lower()
    if content_type == 'application/json-patch+json':
        return _json_patch(target, request.data)
    if not isinstance(request.data, dict):
        raise _bad_request('the patch body is not a JSON object')
    if content_type == 'application/merge-patch+json':
        return _merge_patch(target, request.data)
    if content_type == 'application/strategic-merge-patch+json':
        return _strategic_merge_patch(target, request.data)
    message = (
        f'the body of the request was in an unknown format ({content_type or "no content type"});'
        f' accepted media types include: {", ".join(_PATCH_TYPES)}'
    )
    raise kmock.KubernetesError(415, 'UnsupportedMediaType', message, {})


# Selectors -------------------------------------------------------------------------------------

def _match_labels(selector: str, labels: dict[str, str]) -> bool:
    """Match a label selector string: ``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x)``."""
    for term in re.split(r',(?![^()]*\))', selector):
        term = term.strip()
        if not term:
            continue
        if m := re.fullmatch(r'(\S+)\s+(in|notin)\s*\((.*)\)', term):
            values = {v.strip() for v in m[3].split(',')}
            if (labels.get(m[1]) in values) != (m[2] == 'in'):
                return False
        elif m := re.fullmatch(r'(\S+?)\s*(==|!=|=)\s*(\S*)', term):
            if (labels.get(m[1]) == m[3]) != (m[2] != '!='):
                return False
        elif term.startswith('!'):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _match_fields(selector: str, obj: dict[str, Any]) -> bool:
    """Match a field selector like ``metadata.name=web,metadata.namespace!=kube-system``."""
    for term in filter(None, (t.strip() for t in selector.split(','))):
        m = re.fullmatch(r'([\w.]+)\s*(==|!=|=)\s*(.*)', term)
        if m is None:
            raise _bad_request(f'invalid field selector: {term!r}')
        value: Any = obj
        for part in m[1].split('.'):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value if value is not None else '') == m[3]) != (m[2] != '!='):
            return False
    return True


# Deployment controller state -------------------------------------------------------------------

@dataclasses.dataclass
class _Pods:
    image: str
    labels: dict[str, str]
    count: int
    template_hash: str


@dataclasses.dataclass
class _Rollout:
    generation: int
    started: float  # loop time when this generation was first observed
    image: str
    labels: dict[str, str]
    template_hash: str
    stable: _Pods | None  # pods of the last complete rollout, still serving meanwhile
    complete: bool = False
    serving: list[_Pods] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ReadyPods:
    """Ready pods of one Deployment with one pod template (mid-rollout, old and new come apart)."""

    namespace: str
    deployment: str
    image: str
    labels: dict[str, str]  # the pod template's labels
    count: int


def _int_or_percent(value: Any, total: int, default: str) -> int:
    value = default if value is None else value
    if isinstance(value, str) and value.endswith('%'):
        return int(total * int(value[:-1]) // 100)
    return int(value)


@dataclasses.dataclass
class Gate:
    """
    Requests with ``method`` on exactly ``path`` wait here, after they arrived and before anything
    is written, until :meth:`release`: how a test acts at the moment a write is in flight.

    A held request is served on release even if its client has gone meanwhile (a killed
    worker's write still lands, unreported). ``arrived`` is set at the first such request;
    ``held`` lists them all. A gate is also a context manager that releases it on exit, so a
    failing test never leaves requests stuck.
    """

    method: str
    path: str
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    released: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    held: list[kmock.Request] = dataclasses.field(default_factory=list)
    _serving: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)

    def holds(self, request: kmock.Request) -> bool:
        return (
            not self.released.is_set()
            and request.method == kmock.method(self.method)
            and request.url.path == self.path
        )

    async def serve_on_release(
        self, request: kmock.Request, serve: Callable[[kmock.Request], Awaitable[aiohttp.web.StreamResponse]],
    ) -> aiohttp.web.StreamResponse:
        """Serve `request` once released, in a task of its own that a client disconnect does not cancel."""
        self.held.append(request)
        self.arrived.set()

        async def when_released() -> aiohttp.web.StreamResponse:
            await self.released.wait()
            return await serve(request)

        task = asyncio.create_task(when_released(), name=f'held {self.method} {self.path}')
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        return await asyncio.shield(task)

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


# The emulator ----------------------------------------------------------------------------------

@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """
    A stateful Kubernetes API emulator close enough to kube-apiserver for tidegate.

    * CREATE assigns uid, creationTimestamp, resourceVersion (a global counter,
      as a string) and generation 1; an existing name answers 409 AlreadyExists.
    * PATCH honours the Content-Type (json-patch, merge-patch, strategic-merge-patch);
      PUT replaces the object. A stale ``metadata.resourceVersion`` in a merge/strategic
      patch or PUT body (or left by a JSON patch) answers 409 Conflict.
    * Every effective write bumps resourceVersion and emits a watch event; changes
      outside ``metadata``/``status`` bump ``generation``. Writes to ``/status`` change
      only ``status``; writes to the main resource keep ``status`` of resources
      declared with a status subresource. Deployments also have ``/scale``.
    * Errors are Kubernetes ``Status`` objects with the real reasons and codes.
    * User reactions (``cluster[...] << …``) are consulted before anything is
      written, so injected faults leave the stored state untouched.

    The Deployment controller is a background task that runs while the emulator is
    entered (``async with cluster:``; :func:`serve_cluster` does it). Every
    ``tick_seconds`` it brings each Deployment's ``status`` closer to what the real
    controller reports: pods of a new pod template become ready ``rollout_seconds``
    after the generation changed if ``is_image_ready(image)`` (the first container's
    image); until then the previous ready pods keep serving; after
    ``spec.progressDeadlineSeconds`` (default 600) without success the ``Progressing``
    condition turns False with reason ``ProgressDeadlineExceeded``. Zero counts are
    omitted from ``status``, as the real API server does (read them with ``.get(…, 0)``).

    The service proxy ``GET /api/v1/namespaces/{ns}/services/{name}[:{port}]/proxy/{path}``
    round-robins over the ready pods of Deployments whose pod template labels match
    the Service selector: 503 if there are none; ``health``/``healthz`` answer 200 ``ok``,
    or 500 if ``is_image_healthy(image)`` is false; any other path answers 200 with
    a JSON naming the deployment, image and ``version`` label that served it.
    """

    rollout_seconds: float = 0.2
    tick_seconds: float = 0.05
    is_image_ready: Callable[[str], bool] = default_is_image_ready
    is_image_healthy: Callable[[str], bool] = default_is_image_healthy

    _revision: int = attrs.field(default=0, init=False)
    _rollouts: dict[Key, _Rollout] = attrs.field(factory=dict, init=False)
    _controller: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _proxy_counter: int = attrs.field(default=0, init=False)
    _gates: list[Gate] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback['get /apis/'] << self._serve_apis  # the client's discovery URLs end with a slash
        self.fallback['get /api/'] << self._serve_api
        declare = self._declare
        declare(DEPLOYMENTS, 'Deployment', namespaced=True, subresources={'status', 'scale'}, short={'deploy'})
        declare(SERVICES, 'Service', namespaced=True, subresources={'status', 'proxy'}, short={'svc'})
        declare(NAMESPACES, 'Namespace', namespaced=False, subresources={'status', 'finalize'}, short={'ns'})
        declare(VIRTUALSERVICES, 'VirtualService', namespaced=True, subresources={'status'}, short={'vs'})
        declare(DESTINATIONRULES, 'DestinationRule', namespaced=True, subresources={'status'}, short={'dr'})
        declare(SECRETS, 'Secret', namespaced=True, subresources=set(), short=set())

    def _declare(
        self, resource: kmock.resource, kind: str, *, namespaced: bool, subresources: set[str], short: set[str],
    ) -> None:
        self.resources[resource] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=_VERBS,
            subresources=subresources, shortnames=short,
        )

    # Lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if self._controller is None:
            self._controller = asyncio.create_task(self._run_controller(), name='deployment-controller')
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._entered == 1 and self._controller is not None:
            self._controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller
            self._controller = None
        await super().__aexit__(*exc_info)

    # Public accessors --------------------------------------------------------------------------

    def hold(self, method: str, path: str) -> Gate:
        """Hold every ``method`` request on ``path`` (the URL path, no query) until the gate is released."""
        gate = Gate(method, path)
        self._gates = [g for g in self._gates if not g.released.is_set()] + [gate]
        return gate

    def get(self, resource: str | kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """
        A copy of the stored object, or None if absent/deleted.

        ``resource`` is a ``kmock.resource`` or a string: ``'apps/v1/deployments'``,
        ``'deployments.v1.apps'``, ``'v1/services'`` or a bare plural (``'deployments'``).
        Use ``namespace=None`` for cluster-scoped objects. (This replaces kmock's
        ``get(url)`` HTTP shortcut; use ``request('GET', url)`` for that.)
        """
        return self._live((self._resolve(resource), namespace, name))

    def ready_pods(self) -> list[ReadyPods]:
        """The pods serving right now, as the service proxy sees them (old pods included mid-rollout)."""
        return [
            ReadyPods(namespace or '', name, pods.image, dict(pods.labels), pods.count)
            for (res, namespace, name), rollout in sorted(self._rollouts.items(), key=lambda kv: kv[0][1:])
            if res == DEPLOYMENTS
            for pods in rollout.serving
        ]

    def peek(self, resource: str | kmock.resource) -> list[dict[str, Any]]:
        """
        The live objects of a resource, NOT deep-copied: read them, never change them.

        For readers that look at the whole cluster many times a second (the traffic
        simulator); stored versions are replaced, never edited, on every write.
        """
        res = self._resolve(resource)
        return [obj.raw for (r, _, _), obj in self._objects.items() if r == res and not obj.deleted]

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion issued (the global write counter)."""
        return self._revision

    def _resolve(self, resource: str | kmock.resource) -> kmock.resource:
        res = resource if isinstance(resource, kmock.resource) else kmock.resource(resource)
        if res.group is not None and res.version is not None and res.plural is not None:
            return res
        candidates = {known for known in self._get_resources() if res.check(known)}
        if len(candidates) != 1:
            raise ValueError(f'Ambiguous or unknown resource {resource!r}: {sorted(map(str, candidates))}')
        return candidates.pop()

    # Storage -----------------------------------------------------------------------------------

    def _live(self, key: Key) -> dict[str, Any] | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def _key(self, request: kmock.Request) -> Key:
        assert request.resource is not None and request.name is not None
        return request.resource, request.namespace, request.name

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        return self.resources[resource] if resource in self.resources else None

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self._info(resource)
        return info is not None and 'status' in info.subresources

    async def _commit(self, key: Key, obj: dict[str, Any], event: str) -> dict[str, Any]:
        """Store a new version with a fresh resourceVersion and announce it to watchers."""
        self._revision += 1
        obj['metadata']['resourceVersion'] = str(self._revision)
        if key in self._objects:
            self._objects[key].history.append(obj)
        else:
            self._objects[key] = obj
        await self._buses[key[0]].put({'type': event, 'object': copy.deepcopy(obj)})
        return copy.deepcopy(obj)

    def _typed(self, resource: kmock.resource, obj: dict[str, Any]) -> None:
        info = self._info(resource)
        if info is not None and info.kind:
            obj.setdefault('kind', info.kind)
        obj.setdefault('apiVersion', f'{resource.group}/{resource.version}' if resource.group else resource.version)

    def _defaults(self, resource: kmock.resource, obj: dict[str, Any]) -> None:
        """Apply the defaults the real API server adds to Deployments."""
        spec = obj.get('spec')
        if resource != DEPLOYMENTS or not isinstance(spec, dict):
            return
        for field, default in [('replicas', 1), ('progressDeadlineSeconds', 600), ('revisionHistoryLimit', 10)]:
            if spec.get(field) is None:
                spec[field] = default
        strategy = spec.setdefault('strategy', {})
        strategy.setdefault('type', 'RollingUpdate')
        if strategy['type'] == 'RollingUpdate':
            rolling = strategy.setdefault('rollingUpdate', {})
            rolling.setdefault('maxSurge', '25%')
            rolling.setdefault('maxUnavailable', '25%')

    # Request handling --------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw_request.path
        if _NAMESPACES_PATH.fullmatch(path):
            alias = path.replace('/namespaces', f'/{_NAMESPACES_ALIAS}', 1)
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(alias, keep_query=True))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural == _NAMESPACES_ALIAS:
            path = request.url.path.replace(f'/{_NAMESPACES_ALIAS}', '/namespaces', 1)
            fixed = attrs.evolve(request, resource=NAMESPACES, url=request.url.with_path(path, keep_query=True))
            self._requests[:] = [fixed if r is request else r for r in self._requests]
            request = fixed

        gate = next((gate for gate in self._gates if gate.holds(request)), None)
        if gate is not None:
            return await gate.serve_on_release(request, self._respond)
        return await self._respond(request)

    async def _respond(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip the parent's eager state mutation: user reactions go first (by priority),
        # the writes happen only in the fallback handlers below if nothing intercepted.
        try:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        except _Reply as reply:
            return await kmock.Response(status=reply.status, payload=reply.payload, headers=reply.headers)(request)
        except kmock.KubernetesError as exc:
            headers = {}
            if isinstance(exc.details, dict) and exc.details.get('retryAfterSeconds'):
                headers['Retry-After'] = str(exc.details['retryAfterSeconds'])
            return await kmock.Response(status=exc.status, payload=_status_body(exc), headers=headers)(request)

    async def _serve_create(self, request: kmock.Request) -> Any:
        resource = request.resource
        assert resource is not None
        if request.subresource:
            raise kmock.KubernetesError(405, 'MethodNotAllowed', 'the server does not allow this method', {})
        if not isinstance(request.data, dict):
            raise _bad_request('the body of the request is not a JSON object')
        obj = copy.deepcopy(request.data)
        meta = obj.setdefault('metadata', {})
        info = self._info(resource)
        namespace = request.namespace
        if namespace and meta.get('namespace') not in (None, '', namespace):
            raise _bad_request('the namespace of the provided object does not match the namespace sent on the request')
        if namespace is None and (info is None or info.namespaced is not False):
            namespace = meta.get('namespace') or None
        if namespace is not None:
            meta['namespace'] = namespace
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + uuid.uuid4().hex[:5]
        name = meta.get('name')
        if not name:
            raise kmock.KubernetesError(
                422, 'Invalid', f'{resource.plural} "" is invalid: metadata.name: Required value: name or'
                ' generateName is required', _details(resource, ''))

        async with self._lock:
            key: Key = (resource, namespace, name)
            if self._live(key) is not None:
                raise _already_exists(resource, name)
            for field in ('resourceVersion', 'deletionTimestamp', 'deletionGracePeriodSeconds'):
                meta.pop(field, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            if self._has_status(resource):
                obj.pop('status', None)
            if resource == NAMESPACES:
                obj['status'] = {'phase': 'Active'}
            self._typed(resource, obj)
            self._defaults(resource, obj)
            stored = await self._commit(key, obj, 'ADDED')
        raise _Reply(201, stored)

    async def _serve_update(self, request: kmock.Request) -> Any:  # PATCH
        return await self._write(request, lambda current: _apply_patch(request, current))

    async def _serve_replace(self, request: kmock.Request) -> Any:  # PUT
        if request.resource is None or request.name is None:
            raise kmock.KubernetesError(405, 'MethodNotAllowed', 'PUT needs a named object URL', {})
        if not isinstance(request.data, dict):
            raise _bad_request('the body of the request is not a JSON object')
        return await self._write(request, lambda current: copy.deepcopy(request.data))

    async def _write(self, request: kmock.Request, change: Callable[[dict[str, Any]], Any]) -> Any:
        key = self._key(request)
        resource, _, name = key
        subresource = request.subresource
        if subresource not in (None, 'status') and not (subresource == 'scale' and resource == DEPLOYMENTS):
            raise _not_found(resource, f'{name}/{subresource}')
        async with self._lock:
            current = self._live(key)
            if current is None:
                raise _not_found(resource, name)
            if subresource == 'scale':
                scale = change(self._scale(current))
                if not isinstance(scale, dict):
                    raise _bad_request('the scale is not a JSON object')
                replicas = (scale.get('spec') or {}).get('replicas')
                new = copy.deepcopy(current)
                new.setdefault('spec', {})['replicas'] = replicas
                new['metadata']['resourceVersion'] = (scale.get('metadata') or {}).get('resourceVersion')
                return self._scale(await self._update(key, current, new, status_only=False))
            new = change(copy.deepcopy(current))
            if not isinstance(new, dict) or not isinstance(new.get('metadata', {}), dict):
                raise _bad_request('the resulting object is not a valid JSON object')
            return await self._update(key, current, new, status_only=subresource == 'status')

    async def _update(
        self, key: Key, current: dict[str, Any], new: dict[str, Any], *, status_only: bool,
    ) -> dict[str, Any]:
        """Validate preconditions, merge system fields, and commit an update (lock held)."""
        resource, namespace, name = key
        meta = new.setdefault('metadata', {})
        old_meta = current['metadata']
        if meta.get('resourceVersion') and meta['resourceVersion'] != old_meta.get('resourceVersion'):
            raise _conflict(resource, name)
        if meta.get('name', name) != name:
            raise _bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL ({name})')

        if status_only:
            result = copy.deepcopy(current)
            if 'status' in new:
                result['status'] = new['status']
            else:
                result.pop('status', None)
        else:
            result = new
            meta['name'] = name
            if namespace is not None:
                meta['namespace'] = namespace
            for field in ('uid', 'creationTimestamp', 'deletionTimestamp', 'generation'):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            if self._has_status(resource):
                if 'status' in current:
                    result['status'] = current['status']
                else:
                    result.pop('status', None)
            self._typed(resource, result)
            self._defaults(resource, result)

            def content(obj: dict[str, Any]) -> dict[str, Any]:
                return {k: v for k, v in obj.items() if k not in ('metadata', 'status', 'kind', 'apiVersion')}

            if content(result) != content(current):
                meta['generation'] = int(old_meta.get('generation', 0)) + 1

        result['metadata']['resourceVersion'] = old_meta.get('resourceVersion')
        if result == current:
            return current  # a no-op write: no new resourceVersion, no event (as kube-apiserver)
        if result['metadata'].get('deletionTimestamp') and not result['metadata'].get('finalizers'):
            return await self._remove(key, result)
        return await self._commit(key, result, 'MODIFIED')

    async def _remove(self, key: Key, last: dict[str, Any]) -> dict[str, Any]:
        self._revision += 1
        last = copy.deepcopy(last)
        last['metadata']['resourceVersion'] = str(self._revision)
        self._objects[key].delete()
        self._rollouts.pop(key, None)
        await self._buses[key[0]].put({'type': 'DELETED', 'object': copy.deepcopy(last)})
        return last

    async def _serve_delete(self, request: kmock.Request) -> Any:
        key = self._key(request)
        resource, _, name = key
        if request.subresource:
            raise kmock.KubernetesError(405, 'MethodNotAllowed', 'the server does not allow this method', {})
        options = request.data if isinstance(request.data, dict) else {}
        async with self._lock:
            current = self._live(key)
            if current is None:
                raise _not_found(resource, name)
            meta = current['metadata']
            preconditions = options.get('preconditions') or {}
            if preconditions.get('resourceVersion') not in (None, meta.get('resourceVersion')):
                raise _conflict(resource, name)
            if preconditions.get('uid') not in (None, meta.get('uid')):
                raise _conflict(resource, name)
            if meta.get('finalizers'):
                if meta.get('deletionTimestamp'):
                    return current
                meta.update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                return await self._commit(key, current, 'MODIFIED')
            last = await self._remove(key, current)
        if resource.group in ('', 'apps'):  # built-ins answer a Status, custom resources the object
            details = dict(_details(resource, name), uid=meta.get('uid'))
            return {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success', 'details': details}
        return last

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        key = self._key(request)
        resource, _, name = key
        subresource = request.subresource
        if resource == SERVICES and subresource and subresource.split('/', 1)[0] == 'proxy':
            return await self._serve_proxy(request)
        async with self._lock:
            current = self._live(key)
        if current is None:
            raise _not_found(resource, name)
        if subresource in (None, 'status'):
            return current
        if subresource == 'scale' and resource == DEPLOYMENTS:
            return self._scale(current)
        raise _not_found(resource, f'{name}/{subresource}')

    async def _serve_list(self, request: kmock.Request) -> Any:
        resource = request.resource
        assert resource is not None
        if resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        labels = request.params.get('labelSelector', '')
        fields = request.params.get('fieldSelector', '')
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for (res, namespace, _), obj in self._objects.items()
                if res == resource and not obj.deleted
                if request.namespace is None or namespace == request.namespace
                if not labels or _match_labels(labels, obj.raw.get('metadata', {}).get('labels') or {})
                if not fields or _match_fields(fields, obj.raw)
            ]
            revision = self._revision
        items.sort(key=lambda o: (o['metadata'].get('namespace') or '', o['metadata'].get('name', '')))
        info = self._info(resource)
        kind = info.kind if info is not None and info.kind else resource.plural.capitalize()
        return {
            'apiVersion': f'{resource.group}/{resource.version}' if resource.group else resource.version,
            'kind': f'{kind}List',
            'metadata': {'resourceVersion': str(revision)},
            'items': items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """
        A watch stream like the real server's.

        Existing objects come first as ``ADDED``; with ``?resourceVersion=N`` only
        those changed after N come, in their latest state (``ADDED`` if created after N,
        else ``MODIFIED``; deletions before the watch started are not replayed).
        The snapshot and the subscription to later events are taken atomically,
        so no event is lost in between. Honours ``labelSelector``, ``fieldSelector``
        and ``timeoutSeconds``.
        """
        resource = request.resource
        assert resource is not None
        labels = request.params.get('labelSelector', '')
        fields = request.params.get('fieldSelector', '')
        since = request.params.get('resourceVersion', '')
        since_rv = int(since) if since.isdigit() and int(since) > 0 else None
        try:
            timeout = float(request.params.get('timeoutSeconds') or 0)
        except ValueError:
            timeout = 0

        def rv(version: Any) -> int:
            return int((version.get('metadata') or {}).get('resourceVersion') or 0) if version else 0

        def created_rv(obj: kmock.Object) -> int:
            versions = obj.history.raw
            first = len(versions) - 1
            while first > 0 and versions[first - 1] is not None:
                first -= 1
            return rv(versions[first])

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get('metadata') or {}
            return (
                (request.namespace is None or meta.get('namespace') == request.namespace)
                and (request.name is None or meta.get('name') == request.name)
                and (not labels or _match_labels(labels, meta.get('labels') or {}))
                and (not fields or _match_fields(fields, obj))
            )

        yield b''  # send the headers now, even if nothing happens for a while
        bus = self._buses[resource]
        async with self._lock:
            mark = await bus.mark()
            objs = [obj for (res, _, _), obj in self._objects.items() if res == resource and not obj.deleted]
            initial = [
                {'type': 'ADDED' if since_rv is None or created_rv(obj) > since_rv else 'MODIFIED',
                 'object': copy.deepcopy(obj.raw)}
                for obj in objs
                if matches(obj.raw)
                if since_rv is None or rv(obj.raw) > since_rv
            ]
        try:
            for event in initial:
                yield event
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout > 0 else None
            events = aiter(bus.stream(since=mark))
            while deadline is None or loop.time() < deadline:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    event = await asyncio.wait_for(anext(events), remaining)
                except (asyncio.TimeoutError, StopAsyncIteration):
                    break
                if matches(event['object']):
                    yield event
        finally:
            await bus.unmark(mark)

    def watchers(self, resource: str | kmock.resource) -> int:
        """How many watch streams are currently subscribed to a resource (to wait for them in tests)."""
        return self._buses[self._resolve(resource)].consumer_count

    def _scale(self, deployment: dict[str, Any]) -> dict[str, Any]:
        meta = deployment['metadata']
        selector = ((deployment.get('spec') or {}).get('selector') or {}).get('matchLabels') or {}
        return {
            'kind': 'Scale',
            'apiVersion': 'autoscaling/v1',
            'metadata': {k: meta[k] for k in ('name', 'namespace', 'uid', 'resourceVersion', 'creationTimestamp')
                         if k in meta},
            'spec': {'replicas': (deployment.get('spec') or {}).get('replicas', 1)},
            'status': {
                'replicas': (deployment.get('status') or {}).get('replicas', 0),
                'selector': ','.join(f'{k}={v}' for k, v in selector.items()),
            },
        }

    # Service proxy -----------------------------------------------------------------------------

    async def _serve_proxy(self, request: kmock.Request) -> Any:
        assert request.name is not None and request.subresource is not None
        parts = request.name.split(':')
        name = parts[1] if len(parts) > 1 and parts[0] in ('http', 'https') else parts[0]
        path = request.subresource.split('/', 1)[1] if '/' in request.subresource else ''
        async with self._lock:
            service = self._live((SERVICES, request.namespace, name))
            if service is None:
                raise _not_found(SERVICES, name)
            selector = (service.get('spec') or {}).get('selector') or {}
            endpoints: list[tuple[str, _Pods]] = [
                (dep_name, group)
                for (res, namespace, dep_name), rollout in sorted(self._rollouts.items(), key=lambda kv: kv[0][2])
                if res == DEPLOYMENTS and namespace == request.namespace
                for group in rollout.serving
                if selector and all(group.labels.get(k) == v for k, v in selector.items())
            ]
        total = sum(group.count for _, group in endpoints)
        if not total:
            message = f'no endpoints available for service "{name}"'
            raise kmock.KubernetesError(503, 'ServiceUnavailable', message, {})
        index = self._proxy_counter % total  # round-robin over the ready pods
        self._proxy_counter += 1
        for deployment, group in endpoints:
            if index < group.count:
                break
            index -= group.count
        if path.strip('/') in _HEALTH_PATHS:
            healthy = self.is_image_healthy(group.image)
            raise _Reply(200 if healthy else 500, b'ok' if healthy else b'unhealthy', {'Content-Type': 'text/plain'})
        version = group.labels.get('version') or group.labels.get('app.kubernetes.io/version')
        return {'deployment': deployment, 'image': group.image, 'version': version, 'path': '/' + path}

    # Deployment controller ---------------------------------------------------------------------

    async def _run_controller(self) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception:  # keep the controller alive, as the real one would be restarted
                logger.exception('The simulated deployment controller failed; retrying.')
            await asyncio.sleep(self.tick_seconds)

    async def _reconcile(self) -> None:
        now = asyncio.get_running_loop().time()
        async with self._lock:
            live: set[Key] = set()
            for key, obj in list(self._objects.items()):
                if key[0] != DEPLOYMENTS or obj.deleted:
                    continue
                live.add(key)
                deployment = obj.raw
                rollout = self._track(key, deployment, now)
                status = self._desired_status(deployment, rollout, now)
                if status != deployment.get('status'):
                    await self._commit(key, dict(copy.deepcopy(deployment), status=status), 'MODIFIED')
            for key in set(self._rollouts) - live:
                del self._rollouts[key]

    def _track(self, key: Key, deployment: dict[str, Any], now: float) -> _Rollout:
        """Remember when each generation was first seen and which pods served before it."""
        generation = int(deployment['metadata'].get('generation', 1))
        rollout = self._rollouts.get(key)
        if rollout is not None and rollout.generation == generation:
            return rollout
        template = (deployment.get('spec') or {}).get('template') or {}
        containers = (template.get('spec') or {}).get('containers') or [{}]
        if rollout is None:
            stable = None
        elif rollout.complete:
            replicas = int((deployment.get('status') or {}).get('updatedReplicas', 0))
            stable = _Pods(rollout.image, rollout.labels, replicas, rollout.template_hash)
        else:
            stable = rollout.stable
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        self._rollouts[key] = rollout = _Rollout(
            generation=generation, started=now,
            image=containers[0].get('image') or '',
            labels=dict((template.get('metadata') or {}).get('labels') or {}),
            template_hash=template_hash, stable=stable,
        )
        return rollout

    def _desired_status(self, deployment: dict[str, Any], rollout: _Rollout, now: float) -> dict[str, Any]:
        spec = deployment.get('spec') or {}
        replicas = 1 if spec.get('replicas') is None else max(int(spec['replicas']), 0)
        elapsed = now - rollout.started
        if not rollout.complete:
            ready = self.is_image_ready(rollout.image) and elapsed >= self.rollout_seconds
            rollout.complete = replicas == 0 or ready

        strategy = spec.get('strategy') or {}
        recreate = strategy.get('type') == 'Recreate'
        stable = rollout.stable
        old = new_ready = 0
        if rollout.complete:
            new_ready = replicas
        elif stable is not None and stable.template_hash == rollout.template_hash:
            new_ready = min(replicas, stable.count)  # scaling: the existing pods keep serving
        elif stable is not None and not recreate:
            old = stable.count  # a new template: the old pods serve until the new ones are ready
        rollout.serving = [pods for pods in [
            _Pods(rollout.image, rollout.labels, new_ready, rollout.template_hash),
            _Pods(stable.image, stable.labels, old, stable.template_hash) if stable else None,
        ] if pods is not None and pods.count > 0]

        total = replicas + old
        available = new_ready + old
        rolling = strategy.get('rollingUpdate') or {}
        max_unavailable = 0 if recreate else _int_or_percent(rolling.get('maxUnavailable'), replicas, '25%')
        deadline = float(spec.get('progressDeadlineSeconds') or 600)
        rs_name = f'{deployment["metadata"]["name"]}-{rollout.template_hash}'
        if available >= replicas - max_unavailable:
            available_cond = ('True', 'MinimumReplicasAvailable', 'Deployment has minimum availability.')
        else:
            available_cond = ('False', 'MinimumReplicasUnavailable', 'Deployment does not have minimum availability.')
        if rollout.complete:
            progressing = ('True', 'NewReplicaSetAvailable', f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif elapsed > deadline:
            progressing = ('False', 'ProgressDeadlineExceeded', f'ReplicaSet "{rs_name}" has timed out progressing.')
        else:
            progressing = ('True', 'ReplicaSetUpdated', f'ReplicaSet "{rs_name}" is progressing.')

        previous = {c.get('type'): c for c in (deployment.get('status') or {}).get('conditions') or []}
        conditions = []
        for type_, (state, reason, message) in [('Available', available_cond), ('Progressing', progressing)]:
            old_cond = previous.get(type_) or {}
            same_state = old_cond.get('status') == state
            unchanged = same_state and old_cond.get('reason') == reason and old_cond.get('message') == message
            conditions.append({
                'type': type_, 'status': state, 'reason': reason, 'message': message,
                'lastUpdateTime': old_cond['lastUpdateTime'] if unchanged else _now(),
                'lastTransitionTime': old_cond['lastTransitionTime'] if same_state else _now(),
            })

        counts = {
            'replicas': total, 'updatedReplicas': replicas, 'readyReplicas': available,
            'availableReplicas': available, 'unavailableReplicas': max(total - available, 0),
        }
        status: dict[str, Any] = {'observedGeneration': rollout.generation}
        status.update({k: v for k, v in counts.items() if v})  # omitempty, as the real API
        status['conditions'] = conditions
        return status


# Helpers ---------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serve_cluster(
    host: str = '127.0.0.1', port: int = 0, **options: Any,
) -> AsyncIterator[tuple[ClusterEmulator, str]]:
    """
    Run a :class:`ClusterEmulator` (with its controller) on an HTTP port.

    ``port=0`` picks a free port; ``options`` go to :class:`ClusterEmulator`.
    Yields the emulator and its base URL (e.g. ``http://127.0.0.1:41234``).
    """
    emulator = ClusterEmulator(**options)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        yield emulator, str(server.url).rstrip('/')


def write_kubeconfig(path: str | os.PathLike[str], server_url: str, namespace: str = 'default') -> None:
    """Write a plain kubeconfig (http, no auth) pointing to ``server_url``."""
    config = {
        'apiVersion': 'v1',
        'kind': 'Config',
        'clusters': [{'name': 'sandbox', 'cluster': {'server': server_url}}],
        'users': [{'name': 'sandbox', 'user': {}}],
        'contexts': [{'name': 'sandbox', 'context': {'cluster': 'sandbox', 'user': 'sandbox', 'namespace': namespace}}],
        'current-context': 'sandbox',
        'preferences': {},
    }
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(config, f, sort_keys=False)
