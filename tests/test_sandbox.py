"""The sandbox's traffic and rules, driven through the official client like tidegate drives a cluster.

Routing statistics come from `TrafficSimulator.tick` called directly with a seeded RNG: fast and
deterministic, no waiting on wall time. One test runs the whole stack with a real Prometheus.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client
from prometheus_client.parser import text_string_to_metric_families

from deploy_models import DEFAULT_ERROR_RATE_QUERY, DEFAULT_P99_QUERY, render_query
from sandbox.cluster import ClusterEmulator, serve_cluster, write_kubeconfig
from sandbox.rules import Rules, RulesError
from sandbox.stack import run_sandbox, serve_metrics
from sandbox.traffic import NO_POD, RequestProfile, TrafficSimulator
from tests.conftest import eventually
from worker import kubernetes_api

NS = "default"
ISTIO = ("networking.istio.io", "v1")
MERGE_PATCH = "application/merge-patch+json"


@dataclass
class Kube:
    cluster: ClusterEmulator
    api: client.ApiClient
    rules: Rules

    async def deploy(self, app: str, version: str, image: str, replicas: int = 2) -> None:
        labels = {"app": app, "version": version}
        body: Any = {
            "metadata": {"name": f"{app}-{version}", "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": app, "image": image}]}},
            },
        }
        await client.AppsV1Api(self.api).create_namespaced_deployment(NS, body)

    async def service(self, app: str, selector: dict[str, str]) -> None:
        body: Any = {"metadata": {"name": app}, "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]}}
        await client.CoreV1Api(self.api).create_namespaced_service(NS, body)

    async def select(self, app: str, selector: dict[str, str]) -> None:
        await client.CoreV1Api(self.api).patch_namespaced_service(
            app, NS, {"spec": {"selector": selector}}, _content_type=MERGE_PATCH
        )

    async def istio(self, kind: str, body: dict[str, Any]) -> None:
        await client.CustomObjectsApi(self.api).create_namespaced_custom_object(*ISTIO, NS, kind, body)

    async def set_http(self, name: str, http: list[dict[str, Any]]) -> None:
        await client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            *ISTIO, NS, "virtualservices", name, {"spec": {"http": http}}, _content_type=MERGE_PATCH
        )

    async def ready(self, *deployments: str) -> None:
        """Wait until these Deployments' pods serve (the emulator's controller)."""
        async def check() -> bool:
            serving = {pods.deployment for pods in self.cluster.ready_pods() if pods.count}
            return serving >= set(deployments)

        await eventually(check, timeout=10, what=f"ready pods of {deployments}")

    def simulator(self, **options: Any) -> TrafficSimulator:
        return TrafficSimulator(self.cluster, self.rules, **{"rate": 100.0, "header_share": 0.0, "seed": 7, **options})


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    rules = Rules.load()
    async with serve_cluster(
        rollout_seconds=0.05, is_image_ready=rules.is_ready, is_image_healthy=rules.is_healthy
    ) as (cluster, url):
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, url)
        async with await kubernetes_api(str(kubeconfig)) as api:
            yield Kube(cluster, api, rules)


def destination_rule(app: str) -> dict[str, Any]:
    return {
        "metadata": {"name": app},
        "spec": {"host": app, "subsets": [
            {"name": "stable", "labels": {"version": "v1"}},
            {"name": "canary", "labels": {"version": "v2"}},
        ]},
    }


def routes(app: str, weight: int) -> list[dict[str, Any]]:
    """The shapes tidegate writes: `canary: "true"` to the canary, the rest split by weight."""
    return [
        {"name": "canary-header", "match": [{"headers": {"canary": {"exact": "true"}}}],
         "route": [{"destination": {"host": app, "subset": "canary"}, "weight": 100}]},
        {"name": "primary", "route": [
            {"destination": {"host": app, "subset": "stable"}, "weight": 100 - weight},
            {"destination": {"host": app, "subset": "canary"}, "weight": weight},
        ]},
    ]


async def canary_setup(kube: Kube, canary_image: str = "shop:2.0") -> None:
    """A canary as tidegate sets it up: v1 stable, v2 canary at weight 0, a Service on `app`."""
    await kube.deploy("shop", "v1", "shop:1.0")
    await kube.deploy("shop", "v2", canary_image)
    await kube.service("shop", {"app": "shop"})
    await kube.istio("destinationrules", destination_rule("shop"))
    await kube.istio("virtualservices", {"metadata": {"name": "shop"}, "spec": {"hosts": ["shop"], "http": routes("shop", 0)}})
    await kube.ready("shop-v1", "shop-v2")


async def set_weight(kube: Kube, weight: int) -> None:
    await kube.set_http("shop", routes("shop", weight))


def served(sim: TrafficSimulator, since: Any = None) -> dict[str, int]:
    """Requests per version of the shop app (all statuses)."""
    return {version: counts.requests for version, counts in sim.version_counts("shop", NS, since).items()}


# Routing ---------------------------------------------------------------------------------------


async def test_service_selector_routes_everything_to_the_selected_colour(kube: Kube) -> None:
    await kube.deploy("shop", "blue", "shop:1.0")
    await kube.deploy("shop", "green", "shop:2.0")
    await kube.service("shop", {"app": "shop", "version": "blue"})
    await kube.ready("shop-blue", "shop-green")
    sim = kube.simulator()

    assert sim.tick(10.0) > 800
    assert served(sim).keys() == {"blue"}

    await kube.select("shop", {"app": "shop", "version": "green"})
    mark = sim.mark()
    sim.tick(0.1)  # the very next tick follows the switch
    sim.tick(10.0)
    assert served(sim, mark).keys() == {"green"}


async def test_service_without_version_splits_by_ready_replicas(kube: Kube) -> None:
    await kube.deploy("shop", "v1", "shop:1.0", replicas=3)
    await kube.deploy("shop", "v2", "shop:2.0", replicas=1)
    await kube.service("shop", {"app": "shop"})
    await kube.ready("shop-v1", "shop-v2")
    sim = kube.simulator()
    sim.tick(100.0)
    counts = served(sim)
    assert 0.2 < counts["v2"] / sum(counts.values()) < 0.3


async def test_virtual_service_weights_split_the_traffic(kube: Kube) -> None:
    await canary_setup(kube)
    sim = kube.simulator()

    sim.tick(10.0)
    assert served(sim).keys() == {"v1"}  # weight 0

    await set_weight(kube, 20)
    mark = sim.mark()
    sim.tick(50.0)
    counts = served(sim, mark)
    assert 0.17 < counts["v2"] / sum(counts.values()) < 0.23

    await set_weight(kube, 100)
    mark = sim.mark()
    sim.tick(10.0)
    assert served(sim, mark).keys() == {"v2"}


async def test_header_route_sends_the_canary_share_to_the_canary(kube: Kube) -> None:
    await canary_setup(kube)  # weight 0: only the header route reaches v2
    sim = kube.simulator(header_share=0.1)
    sim.tick(100.0)
    counts = served(sim)
    assert 0.08 < counts["v2"] / sum(counts.values()) < 0.12


async def test_cookie_prefix_and_unmatched_requests(kube: Kube) -> None:
    """Cookies are the `cookie` header (Istio); requests no route matches get Envoy's 404."""
    await canary_setup(kube)
    await kube.set_http("shop", [
        {"match": [{"headers": {"cookie": {"regex": r"^(.*?;\s*)?user=beta(;.*)?$"}}}],
         "route": [{"destination": {"host": "shop", "subset": "canary"}}]},
        {"match": [{"headers": {"x-tier": {"prefix": "gold"}}}, {"uri": {"exact": "/admin"}}],
         "route": [{"destination": {"host": "shop.default.svc.cluster.local", "subset": "stable"}}]},
    ])
    sim = kube.simulator(
        cookie="session=42; user=beta", cookie_share=0.2,
        profiles=[RequestProfile(0.3, {"X-Tier": "gold-plus"}), RequestProfile(0.1, path="/admin")],
    )
    sim.tick(100.0)
    counts = sim.totals()
    total = sum(counts.values())
    assert 0.17 < counts["shop", NS, "v2", "200"] / total < 0.23
    assert 0.36 < counts["shop", NS, "v1", "200"] / total < 0.44
    assert 0.36 < counts["shop", NS, NO_POD, "404"] / total < 0.44


async def test_no_ready_pod_answers_503_under_version_none(kube: Kube) -> None:
    await kube.deploy("shop", "v1", "shop:1.0-crash")  # the default rules: never ready
    await kube.service("shop", {"app": "shop"})
    await eventually(
        lambda: _has_status(kube, "shop-v1"), timeout=10, what="the controller's first status"
    )
    sim = kube.simulator()
    sim.tick(1.0)
    assert set(sim.totals()) == {("shop", NS, NO_POD, "503")}
    assert sim.version_counts("shop", NS)[NO_POD].error_rate == 1.0


async def _has_status(kube: Kube, name: str) -> bool:
    deployment = await client.AppsV1Api(kube.api).read_namespaced_deployment_status(name, NS)
    return deployment.status is not None and bool(deployment.status.conditions)


async def test_unhealthy_image_fails_health_through_the_service_proxy(kube: Kube) -> None:
    await kube.deploy("shop", "v1", "shop:1.0-unhealthy")
    await kube.service("shop", {"app": "shop"})
    await kube.ready("shop-v1")
    url = f"{kube.api.configuration.host}/api/v1/namespaces/{NS}/services/shop:80/proxy/health"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 500


# Behaviours and metrics ------------------------------------------------------------------------


async def test_bad_image_answers_about_a_fifth_with_5xx(kube: Kube) -> None:
    await canary_setup(kube, canary_image="shop:2.0-bad")
    await set_weight(kube, 50)
    sim = kube.simulator()
    sim.tick(100.0)  # large ticks: counts drawn in aggregate
    counts = sim.version_counts("shop", NS)
    assert 0.18 < counts["v2"].error_rate < 0.22
    assert counts["v1"].error_rate < 0.01
    assert sim.first_error_at("shop", NS, "v2") is not None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative (le, count) buckets."""
    buckets = sorted(buckets)
    rank = q * buckets[-1][1]
    previous_le, previous_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return previous_le
            return previous_le + (le - previous_le) * (rank - previous_count) / (count - previous_count)
        previous_le, previous_count = le, count
    raise AssertionError("unreachable")


async def test_slow_image_p99_from_the_histogram_is_near_two_seconds(kube: Kube) -> None:
    await kube.deploy("shop", "v1", "shop:1.0-slow")
    await kube.deploy("shop", "v2", "shop:2.0")
    await kube.service("shop", {"app": "shop"})
    await kube.ready("shop-v1", "shop-v2")
    sim = kube.simulator()
    for _ in range(2000):  # ticks as the live loop makes them: one draw per request
        sim.tick(0.1)
    async with serve_metrics(sim.registry) as url, aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            text = await response.text()
    buckets: dict[str, list[tuple[float, float]]] = {"v1": [], "v2": []}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_request_duration_seconds_bucket":
                buckets[sample.labels["version"]].append((float(sample.labels["le"]), sample.value))
    assert 1.7 < histogram_quantile(0.99, buckets["v1"]) < 2.3
    assert histogram_quantile(0.99, buckets["v2"]) < 0.1
    assert 'http_requests_total{app="shop",namespace="default",status="200",version="v1"}' in text


# Rules -----------------------------------------------------------------------------------------


async def test_user_rules_come_before_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - image: 'shop:2.*'\n"
        "    errorRate: 0.5\n"
        "    latency: {p50: 100ms, p99: 1s}\n"
        "  - image: '*:*-bad'\n"
        "    errorRate: 0.05\n",
        encoding="utf-8",
    )
    rules = Rules.load(path)
    assert rules.behaviour("shop:2.0").error_rate == 0.5
    assert (rules.behaviour("shop:2.0").p50, rules.behaviour("shop:2.0").p99) == (0.1, 1.0)
    assert rules.behaviour("shop:2.0-bad").error_rate == 0.5  # the first match wins
    assert rules.behaviour("cart:2.0-bad").error_rate == 0.05
    assert not rules.is_ready("cart:1.0-crash")  # the defaults still follow
    assert not rules.is_healthy("cart:1.0-unhealthy")
    assert Rules.load().behaviour("cart:2.0-bad").error_rate == 0.2


async def test_bad_rules_file_names_the_rule_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - image: 'a:*'\n  - image: 'b:*'\n    errorRate: 1.5\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"rules\[1\] \(image 'b:\*'\): errorRate: .*less than or equal to 1"):
        Rules.load(path)
    path.write_text("- image: 'a:*'\n  latency: {p50: 2s, p99: 1s}\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"rules\[0\] \(image 'a:\*'\): latency: .*p99"):
        async with run_sandbox(tmp_path / "sandbox", rules_file=path, prometheus_port=None):
            pass  # pragma: no cover - the rules are checked before anything starts
    path.write_text("- image: 'a:*'\n  colour: red\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"rules\[0\] \(image 'a:\*'\): colour: Extra inputs"):
        Rules.load(path)


# The whole stack -------------------------------------------------------------------------------


async def test_sandbox_error_rate_query_through_prometheus(prometheus_binary: str, tmp_path: Path) -> None:
    async with run_sandbox(tmp_path, rate=1000.0, rollout_seconds=0.05, seed=3) as sandbox:
        assert sandbox.prometheus_url is not None
        async with await kubernetes_api(str(sandbox.kubeconfig)) as api:
            kube = Kube(sandbox.cluster, api, sandbox.rules)
            await canary_setup(kube, canary_image="shop:2.0-bad")
            await set_weight(kube, 50)

        async with aiohttp.ClientSession() as session:
            async def exported() -> bool:
                async with session.get(sandbox.metrics_url) as response:
                    return 'status="500",version="v2"' in await response.text()

            await eventually(exported, timeout=5, what="the canary's series on /metrics")

            async def query(template: str, version: str) -> float | None:
                promql = render_query(template, app="shop", namespace=NS, version=version)
                async with session.get(f"{sandbox.prometheus_url}/api/v1/query", params={"query": promql}) as answer:
                    result = (await answer.json())["data"]["result"]
                value = float(result[0]["value"][1]) if result else math.nan
                return None if math.isnan(value) else value

            async def measured() -> tuple[float, float, float] | None:
                canary, stable = await query(DEFAULT_ERROR_RATE_QUERY, "v2"), await query(DEFAULT_ERROR_RATE_QUERY, "v1")
                p99 = await query(DEFAULT_P99_QUERY, "v1")
                return None if canary is None or stable is None or p99 is None else (canary, stable, p99)

            started = time.monotonic()
            canary, stable, p99 = await eventually(measured, timeout=25, what="error rates in Prometheus")
            assert 0.12 < canary < 0.28, canary
            assert stable < 0.02, stable
            assert 0.05 < p99 < 0.25, p99  # a few hundred samples: the bucket above 0.1 is within reach
            assert time.monotonic() - started < 25
        prometheus_url = sandbox.prometheus_url

    async with aiohttp.ClientSession() as session:  # stopped with the block: nothing answers any more
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{prometheus_url}/-/ready"):
                pass
