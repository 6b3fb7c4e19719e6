"""The seed's `canary_controller.py`, as the baseline tidegate is measured against.

The seed's algorithm, unchanged: for each stage 5 → 25 → 50 → 100 set the canary weight, sleep
the whole window (`time.sleep(600)` in the seed), check the metrics once, and on an unhealthy
result set the weight to 0 and stop. Its two queries are the seed's own (error ratio over `[5m]`
across all versions, p99 from the raw buckets without `sum by (le)`), healthy meaning error rate
< 1% and p99 < 1 s, run against the same Prometheus, and it talks to the same (sandbox) cluster
through the official `kubernetes` client, as the seed does.

What the seed leaves out is filled in plainly, and what the benchmark must change is said:

* `window` is a parameter (the benchmark shortens the seed's 600 s, for tidegate too);
* `update_traffic_weight` (not shown in the seed) replaces the weights of the VirtualService's
  weighted route: v1 gets 100 - w, v2 gets w;
* `query_prometheus` (not shown either) runs an instant query and returns the highest value among
  the series it returns (for the error ratio, the app-wide figure the seed's query gives; for
  p99, the slowest series: the least favourable reading, as a cautious baseline would take), NaN when there are none:
  as in the seed, a NaN compares false, so no data is unhealthy;
* the queries are scoped to the app (`app="..."`): the seed's script assumes one app per
  Prometheus, and the benchmark runs many apps on one sandbox. They are not scoped to the
  version: that is the seed's query.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from kubernetes import client, config

SEED_STAGES = (5, 25, 50, 100)
SEED_WINDOW_SECONDS = 600.0
ISTIO = dict(group="networking.istio.io", version="v1", plural="virtualservices")


def seed_queries(app: str) -> tuple[str, str]:
    """The seed's error-rate and p99 queries, scoped to one app (see the module's docstring)."""
    scope = f'app="{app}"'
    error_rate = (
        f'sum(rate(http_requests_total{{{scope},status=~"5.."}}[5m])) / sum(rate(http_requests_total{{{scope}}}[5m]))'
    )
    p99 = f"histogram_quantile(0.99, rate(http_request_duration_seconds_bucket{{{scope}}}[5m]))"
    return error_rate, p99


@dataclass
class CanaryController:
    kubeconfig: str
    prometheus_url: str
    app: str
    namespace: str = "default"
    window: float = SEED_WINDOW_SECONDS
    sleep: Callable[[float], None] = time.sleep
    log: list[tuple[float, str]] = field(default_factory=list)  # (time.time(), what happened)
    queries: int = 0  # PromQL queries sent

    def __post_init__(self) -> None:
        # The seed's `config.load_kube_config()`, without touching the process-wide default
        # (several controllers run at once in the benchmark).
        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=self.kubeconfig))

    def promote_canary(self, stages: tuple[int, ...] = SEED_STAGES) -> bool:
        """渐进式金丝雀发布 (the seed's progressive canary)."""
        for weight in stages:
            self.update_traffic_weight(weight)  # 更新流量权重
            self.sleep(self.window)  # 观察10分钟
            metrics = self.check_metrics()  # 检查指标
            if not metrics["healthy"]:
                self.record(f"unhealthy at {weight}%: {metrics}; rolling back to 0%")
                self.update_traffic_weight(0)
                return False
            self.record(f"{weight}% healthy: {metrics}")
        return True

    def check_metrics(self) -> dict[str, Any]:
        error_query, p99_query = seed_queries(self.app)
        error_rate = self.query_prometheus(error_query)  # 错误率
        p99_latency = self.query_prometheus(p99_query)  # 延迟
        return {"healthy": error_rate < 0.01 and p99_latency < 1.0, "error_rate": error_rate, "p99": p99_latency}

    def query_prometheus(self, query: str) -> float:
        self.queries += 1
        response = requests.get(f"{self.prometheus_url}/api/v1/query", params={"query": query}, timeout=10)
        response.raise_for_status()
        values = [float(sample["value"][1]) for sample in response.json()["data"]["result"]]
        finite = [v for v in values if math.isfinite(v)]
        return max(finite) if finite else math.nan

    def update_traffic_weight(self, weight: int) -> None:
        service = self.api.get_namespaced_custom_object(namespace=self.namespace, name=self.app, **ISTIO)
        http = service["spec"]["http"]
        for route in http:
            subsets = {(d.get("destination") or {}).get("subset") for d in route.get("route") or []}
            if not route.get("match") and {"v1", "v2"} <= subsets:
                for destination in route["route"]:
                    subset = destination["destination"]["subset"]
                    destination["weight"] = weight if subset == "v2" else 100 - weight if subset == "v1" else 0
        self.api.patch_namespaced_custom_object(
            namespace=self.namespace, name=self.app, body={"spec": {"http": http}}, **ISTIO
        )
        self.record(f"weight {weight}%")

    def record(self, what: str) -> None:
        self.log.append((time.time(), what))
