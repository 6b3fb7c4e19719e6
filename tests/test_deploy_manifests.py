"""The manifests that run tidegate in a cluster, and the least privilege they grant.

What the worker needs is derived from the activities' code, not copied by hand: every call
through the official client (`self.apps.read_namespaced_deployment`, ...) maps to an RBAC verb and
resource, custom objects by their `group` and `plural` arguments (followed through the helpers
that pass them on). Each namespace's Role must grant exactly that set: all of it, and no more.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "worker.yaml"

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

# The official client's API classes and the API group each one serves.
API_GROUPS = {
    "CoreV1Api": "",
    "AppsV1Api": "apps",
    "BatchV1Api": "batch",
    "AutoscalingV2Api": "autoscaling",
    "NetworkingV1Api": "networking.k8s.io",
    "PolicyV1Api": "policy",
}
CUSTOM_OBJECTS = "CustomObjectsApi"
# The client's method prefixes and the RBAC verb each one needs.
VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete_collection": "deletecollection",
    "delete": "delete",
}
NAMESPACED = re.compile(r"^(?P<verb>%s)_namespaced_(?P<kind>\w+?)(?:_(?P<sub>status|scale))?$" % "|".join(VERBS))


def plural(kind: str) -> str:
    """`deployment` → `deployments`, `network_policy` → `networkpolicies` (RBAC's resource names)."""
    word = kind.replace("_", "")
    if word.endswith("y"):
        return word[:-1] + "ies"
    if word.endswith("s"):
        return word + "es"
    return word + "s"


class ActivityCalls:
    """The Kubernetes API calls one activities module makes, read from its source."""

    def __init__(self, module_name: str) -> None:
        self.module = importlib.import_module(module_name)
        self.tree = ast.parse(Path(self.module.__file__ or "").read_text())
        self.functions = {node.name: node for node in ast.walk(self.tree) if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)}
        self.apis = self._api_attributes()

    def _api_attributes(self) -> dict[str, str]:
        """`self.apps = client.AppsV1Api(api)` (or `... if api else None`) → {"apps": "AppsV1Api"}."""
        found = {}
        for node in ast.walk(self.tree):
            value = node.value.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.IfExp) else getattr(node, "value", None)
            if isinstance(node, ast.Assign) and isinstance(value, ast.Call):
                func = value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name.endswith("Api") and name != "ApiClient":
                    for target in node.targets:
                        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                            found[target.attr] = name
        return found

    def _enclosing(self, target: ast.AST) -> ast.AsyncFunctionDef | ast.FunctionDef:
        for function in self.functions.values():
            if any(node is target for node in ast.walk(function)):
                return function
        raise AssertionError(f"line {getattr(target, 'lineno', '?')} is outside any function")

    def resolve(self, expression: ast.expr, where: ast.AsyncFunctionDef | ast.FunctionDef) -> set[str]:
        """Every constant value `expression` can take: literals, module constants, and a
        parameter's arguments at each call of the function it belongs to."""
        if isinstance(expression, ast.Constant) and isinstance(expression.value, str):
            return {expression.value}
        if isinstance(expression, ast.Name):
            parameters = [a.arg for a in where.args.args if a.arg != "self"]
            if expression.id in parameters:
                return self._arguments(where.name, parameters.index(expression.id), expression.id)
            value = getattr(self.module, expression.id, None)
            if isinstance(value, str):
                return {value}
        raise AssertionError(f"{where.name}: cannot tell the value of {ast.unparse(expression)} from the code")

    def _arguments(self, function: str, index: int, name: str) -> set[str]:
        values: set[str] = set()
        for call in self._calls_of(function):
            argument = call.args[index] if index < len(call.args) else next(
                (k.value for k in call.keywords if k.arg == name), None
            )
            assert argument is not None, f"a call of {function} without its {name}"
            values |= self.resolve(argument, self._enclosing(call))
        assert values, f"{function} is never called, so its {name} is unknown"
        return values

    def _calls_of(self, function: str) -> Iterator[ast.Call]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == function:
                yield node

    def grants(self) -> set[Grant]:
        """Every (apiGroup, resource, verb) the module's code can ask the API server for."""
        needed: set[Grant] = set()
        for node in ast.walk(self.tree):
            if not (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"
                and node.value.attr in self.apis
            ):
                continue
            api, method = self.apis[node.value.attr], node.attr
            if method.startswith("_") or method in ("api_client",):
                continue
            if method.endswith(("_for_all_namespaces", "_cluster_custom_object")) or "namespaced" not in method:
                raise AssertionError(f"{method}: a cluster-wide call, which a namespaced Role cannot grant")
            if api == CUSTOM_OBJECTS:
                needed |= self._custom_grants(node, method)
                continue
            match = NAMESPACED.match(method)
            assert match, f"{method}: not a client method this test knows how to map to RBAC"
            assert api in API_GROUPS, f"{api}: add its API group to API_GROUPS"
            resource = plural(match["kind"]) + (f"/{match['sub']}" if match["sub"] else "")
            needed.add((API_GROUPS[api], resource, VERBS[match["verb"]]))
            needed |= self._watch(node, API_GROUPS[api], resource)
        return needed

    def _custom_grants(self, node: ast.Attribute, method: str) -> set[Grant]:
        match = re.match(r"^(?P<verb>%s)_namespaced_custom_object(?:_(?P<sub>status|scale))?$" % "|".join(VERBS), method)
        assert match, f"{method}: not a custom-object method this test knows how to map to RBAC"
        call = next(
            (c for c in ast.walk(self.tree) if isinstance(c, ast.Call) and c.func is node), None
        )
        assert call is not None, f"{method} is referenced but not called: pass group and plural explicitly"
        where = self._enclosing(call)
        arguments = {k.arg: k.value for k in call.keywords}
        groups = self.resolve(arguments["group"], where)
        plurals = self.resolve(arguments["plural"], where)
        suffix = f"/{match['sub']}" if match["sub"] else ""
        grants = {(group, name + suffix, VERBS[match["verb"]]) for group in groups for name in plurals}
        for group in groups:
            for name in plurals:
                grants |= self._watch(node, group, name)
        return grants

    def _watch(self, node: ast.Attribute, group: str, resource: str) -> set[Grant]:
        """A list call with `watch=True` (or a `kubernetes.watch.Watch` stream) also needs `watch`."""
        for call in ast.walk(self.tree):
            if isinstance(call, ast.Call) and (call.func is node or node in call.args):
                if any(k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value for k in call.keywords):
                    return {(group, resource, "watch")}
                if isinstance(call.func, ast.Attribute) and call.func.attr == "stream":
                    return {(group, resource, "watch")}
        return set()


def activity_modules() -> list[str]:
    """Every activities module that talks to the Kubernetes API."""
    return sorted(
        f"activities.{path.stem}"
        for path in (ROOT / "activities").glob("*.py")
        if "kubernetes" in path.read_text() and re.search(r"^from kubernetes|^import kubernetes", path.read_text(), re.M)
    )


def needed_grants() -> set[Grant]:
    needed: set[Grant] = set()
    for module in activity_modules():
        needed |= ActivityCalls(module).grants()
    return needed


def manifests() -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(MANIFESTS.read_text()) if document]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for document in manifests() if document["kind"] == kind]


def role_grants(role: dict[str, Any]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_derivation_sees_the_calls_it_must() -> None:
    """A guard on the derivation itself: calls known to be in the code are found."""
    needed = needed_grants()
    assert ("apps", "deployments", "get") in needed  # read_namespaced_deployment, passed to _read
    assert ("apps", "deployments", "update") in needed  # replace_namespaced_deployment
    assert ("", "services", "patch") in needed  # the guarded selector switch
    assert ("networking.istio.io", "virtualservices", "patch") in needed
    assert ("networking.istio.io", "destinationrules", "get") in needed  # plural through _read_istio
    assert ("", "secrets", "get") in needed  # a secretKeyRef, read by activities.secrets


def test_manifests_parse_and_run_the_worker_in_the_cluster() -> None:
    kinds = [document["kind"] for document in manifests()]
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment"} <= set(kinds)
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds  # namespaced rights only
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (account,) = by_kind("ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert deployment["metadata"]["namespace"] == account["metadata"]["namespace"]
    (container,) = pod["containers"]
    assert "--in-cluster" in container["args"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    metrics_port = {e["name"]: e["value"] for e in container["env"]}["TIDEGATE_METRICS_PORT"]
    assert ports["metrics"] == int(metrics_port)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == metrics_port


def test_every_role_grants_exactly_what_the_activities_use() -> None:
    needed = needed_grants()
    roles = by_kind("Role")
    assert roles, "no Role in deploy/worker.yaml"
    for role in roles:
        where = f"Role {role['metadata']['namespace']}/{role['metadata']['name']}"
        granted = role_grants(role)
        missing = sorted(needed - granted)
        assert not missing, f"{where} does not grant (apiGroup, resource, verb) the activities use: {missing}"
        extra = sorted(granted - needed)
        assert not extra, f"{where} grants what no activity uses (least privilege): {extra}"


def test_the_workers_namespace_allow_list_is_the_namespaces_it_has_roles_in() -> None:
    (deployment,) = by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    allowed = {e["name"]: e["value"] for e in container["env"]}["TIDEGATE_NAMESPACES"]
    assert set(allowed.split(",")) == {role["metadata"]["namespace"] for role in by_kind("Role")}


def test_each_role_is_bound_to_the_worker_in_its_namespace() -> None:
    (account,) = by_kind("ServiceAccount")
    bindings = by_kind("RoleBinding")
    for role in by_kind("Role"):
        namespace = role["metadata"]["namespace"]
        bound = [
            binding
            for binding in bindings
            if binding["metadata"]["namespace"] == namespace
            and binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        ]
        assert len(bound) == 1, f"Role {namespace}/{role['metadata']['name']} is bound {len(bound)} times"
        assert {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]} in bound[0]["subjects"]


@pytest.mark.parametrize("method, expected", [
    ("read_namespaced_deployment", ("apps", "deployments", "get")),
    ("patch_namespaced_deployment_scale", ("apps", "deployments/scale", "patch")),
    ("delete_collection_namespaced_network_policy", ("networking.k8s.io", "networkpolicies", "deletecollection")),
])
def test_client_method_mapping(method: str, expected: Grant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapping from the client's method names to RBAC, on a module written for the test."""
    api = {"apps": "AppsV1Api", "networking.k8s.io": "NetworkingV1Api"}[expected[0]]
    module = f"probe_activities_{method}"
    (tmp_path / f"{module}.py").write_text(
        "from kubernetes.aio import client\n"
        "class Probe:\n"
        "    def __init__(self, api):\n"
        f"        self.api_object = client.{api}(api)\n"
        "    async def go(self):\n"
        f"        await self.api_object.{method}(name='x', namespace='y')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ActivityCalls(module).grants() == {expected}
