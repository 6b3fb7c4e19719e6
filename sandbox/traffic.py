"""Simulated client traffic through the emulated cluster, exported as Prometheus metrics.

Canary analysis needs requests that land where Kubernetes and Istio would send them *now*: when a
workflow moves a weight or switches a selector, the next tick's traffic follows. Every tick, each
app that has a Service gets about `rate × tick` requests (Poisson), routed from the stored objects:

* **Istio**: a VirtualService whose `hosts` name the app's Service (short name or FQDN) and whose
  `gateways` are unset or include `mesh` takes over. Its `http` routes are tried in order; a route
  applies when any of its `match` entries matches the request (`headers`, `withoutHeaders`, `uri`,
  `method`, `scheme`, `authority`, `queryParams`, `ignoreUriCase`, `gateways`; exact/prefix/regex,
  an empty match testing presence; cookies are the `cookie` header, as in Istio). Anything else in
  a match (`sourceLabels`, `sourceNamespace`, ...) never matches: these clients have no labels.
  A route without `match` catches the rest. The destination is drawn by `weight` (normalised by
  the sum; a lone destination without a weight gets 100). Its `subset` maps to labels through the
  DestinationRule for the same host; the serving pods are the ready pods whose template labels
  hold the destination Service's selector and the subset's labels. A `directResponse` answers its
  status; no applicable route answers 404, as Envoy does.
* **Plain Kubernetes**: the Service's selector picks the pods.

Among the serving pods requests split by ready replicas (mid-rollout the old pods still serve).
A request that finds no ready pod, an unknown host or subset, fails with 503 and is counted under
`version="none"`, so that it shows in the app's totals without touching any version's error rate
(Istio's own metrics call it `unknown`). A served request answers 200, or 500 with the serving
image's `errorRate`, after a latency drawn from the lognormal through its p50 and p99.

Metrics (`prometheus_client` exposition of `registry`): the counter
`http_requests_total{app,namespace,version,status}` and the histogram
`http_request_duration_seconds{app,namespace,version}`; `app` and `version` are the serving pod's
labels. Every running version exports its `200` and `500` series at 0 from the moment its pods
are ready, so the error-rate query has a numerator (0, not "no data") and `rate()` sees the counter
start. Counting is aggregate: no object per request, and above a few dozen requests per
destination and tick the counts come from binomial/multinomial draws instead of one draw each.

Apps are `(namespace, spec.selector.app)` of Services; an app with several Services (e.g. a
blue/green preview Service) is called through the one named like the app, else one whose name
does not mention "preview", else the first by name.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from sandbox.cluster import DESTINATIONRULES, SERVICES, VIRTUALSERVICES, ClusterEmulator, ReadyPods
from sandbox.rules import Behaviour, Rules

__all__ = [
    "BUCKETS",
    "NO_POD",
    "RequestProfile",
    "TrafficMark",
    "TrafficSimulator",
    "TrafficStats",
    "VersionCounts",
]

# A 1 s p99 limit and a 2 s slow version must fall on bucket edges' neighbourhoods, not in one wide bucket.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
NO_POD = "none"  # the version label of requests no pod served
NO_POD_LATENCY = 0.001  # a proxy's immediate 503/404
MAX_STEP = 5.0  # after a stall (suspended laptop), generate at most this many seconds of traffic at once
AGGREGATE_ABOVE = 24  # per-destination requests per tick above which counts are drawn, not enumerated
CLUSTER_DOMAIN = "svc.cluster.local"
logger = logging.getLogger(__name__)
Key = tuple[str, str, str]  # app, namespace, version


@dataclass(frozen=True)
class RequestProfile:
    """A share of the traffic that carries these headers (names are case-insensitive)."""

    share: float
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str = "/"
    method: str = "GET"
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionCounts:
    requests: int = 0
    errors: int = 0  # 5xx

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class TrafficMark:
    """The totals at a moment, to count what happened since (`TrafficSimulator.since`)."""

    at: float  # time.monotonic()
    totals: Mapping[tuple[str, str, str, str], int]


@dataclass
class TrafficStats:
    """What the simulator cost: `busy_seconds` is CPU-bound time spent inside `tick`."""

    ticks: int = 0
    requests: int = 0
    busy_seconds: float = 0.0
    replans: int = 0
    max_tick_seconds: float = 0.0

    @property
    def seconds_per_tick(self) -> float:
        return self.busy_seconds / self.ticks if self.ticks else 0.0


# Sampling ----------------------------------------------------------------------------------------


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean < 30:  # Knuth: about mean+1 uniforms
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - _binomial(rng, n, 1 - p)
    if n <= AGGREGATE_ABOVE:
        rand = rng.random
        return sum(1 for _ in range(n) if rand() < p)
    mean = n * p
    if mean < 10:
        return min(n, _poisson(rng, mean))
    return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))


def _multinomial(rng: random.Random, n: int, probabilities: Sequence[float]) -> list[int]:
    counts, remaining, mass = [], n, 1.0
    for p in probabilities:
        if remaining <= 0 or mass <= 0:
            counts.append(0)
            continue
        k = _binomial(rng, remaining, min(1.0, p / mass))
        counts.append(k)
        remaining -= k
        mass -= p
    if remaining > 0:  # float rounding left some mass: the last non-empty cell takes it
        last = max((i for i, p in enumerate(probabilities) if p > 0), default=len(counts) - 1)
        counts[last] += remaining
    return counts


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


class _Latency:
    """A behaviour's lognormal, with per-bucket probabilities and means for aggregate draws."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.mu, self.sigma = behaviour.mu, behaviour.sigma
        edges = [0.0, *BUCKETS, math.inf]
        if self.sigma <= 0:  # p50 == p99: always the same latency
            value = behaviour.p50
            index = bisect.bisect_left(BUCKETS, value)
            self.probabilities = [1.0 if i == index else 0.0 for i in range(len(BUCKETS) + 1)]
            self.means = [value] * (len(BUCKETS) + 1)
            return
        mu, sigma = self.mu, self.sigma
        mean = math.exp(mu + sigma * sigma / 2)

        def cdf(x: float, shift: float = 0.0) -> float:
            if x <= 0:
                return 0.0
            if math.isinf(x):
                return 1.0
            return _phi((math.log(x) - mu - shift) / sigma)

        self.probabilities, self.means = [], []
        for low, high in zip(edges, edges[1:]):
            p = cdf(high) - cdf(low)
            partial = mean * (cdf(high, sigma * sigma) - cdf(low, sigma * sigma))  # E[X; low < X <= high]
            self.probabilities.append(max(p, 0.0))
            self.means.append(partial / p if p > 1e-15 else (low if math.isinf(high) else high))

    def observe(self, rng: random.Random, k: int, buckets: list[int]) -> float:
        """Add `k` samples to the bucket counts; returns their sum."""
        if k > AGGREGATE_ABOVE:
            total = 0.0
            for index, count in enumerate(_multinomial(rng, k, self.probabilities)):
                if count:
                    buckets[index] += count
                    total += count * self.means[index]
            return total
        if self.sigma <= 0:
            value = self.means[0]
            buckets[bisect.bisect_left(BUCKETS, value)] += k
            return k * value
        total = 0.0
        sample, where = rng.lognormvariate, bisect.bisect_left
        mu, sigma = self.mu, self.sigma
        for _ in range(k):
            value = sample(mu, sigma)
            buckets[where(BUCKETS, value)] += 1
            total += value
        return total


# Counting ----------------------------------------------------------------------------------------


class _Series:
    """Counters and histogram of one (app, namespace, version)."""

    __slots__ = ("key", "statuses", "buckets", "sum", "first_error_at")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.statuses: dict[str, int] = {} if key[2] == NO_POD else {"200": 0, "500": 0}
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.first_error_at: datetime | None = None

    def add(self, status: str, count: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + count
        if self.first_error_at is None and status.startswith("5"):
            self.first_error_at = datetime.now(timezone.utc)


class _Outcome:
    """Where a share of an app's requests ends: a version serving them, or a proxy's error."""

    __slots__ = ("series", "latency", "error_rate", "status")

    def __init__(self, series: _Series, latency: _Latency | None, error_rate: float, status: str) -> None:
        self.series, self.latency, self.error_rate, self.status = series, latency, error_rate, status

    def serve(self, rng: random.Random, k: int) -> None:
        series = self.series
        if self.latency is None:
            series.add(self.status, k)
            series.buckets[0] += k
            series.sum += k * NO_POD_LATENCY
            return
        errors = _binomial(rng, k, self.error_rate)
        if errors:
            series.add("500", errors)
        series.statuses["200"] += k - errors
        series.sum += self.latency.observe(rng, k, series.buckets)


@dataclass
class _Stream:
    namespace: str
    app: str
    service: str
    outcomes: list[_Outcome]
    probabilities: list[float]
    cumulative: list[float]


@dataclass(frozen=True)
class _Request:
    headers: Mapping[str, str]  # lower-case names
    path: str
    method: str
    query: Mapping[str, str]


class _Collector:
    """Renders the series at scrape time: updates stay plain integer additions."""

    def __init__(self, simulator: TrafficSimulator) -> None:
        self._simulator = simulator

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "http_requests", "HTTP requests answered by the simulated apps.",
            labels=["app", "namespace", "version", "status"],
        )
        durations = HistogramMetricFamily(
            "http_request_duration_seconds", "HTTP request latencies of the simulated apps.",
            labels=["app", "namespace", "version"],
        )
        edges = [floatToGoString(edge) for edge in BUCKETS] + ["+Inf"]
        for key, series in sorted(self._simulator._series.items()):
            for status, count in sorted(series.statuses.items()):
                requests.add_metric([*key, status], count)
            cumulative, running = [], 0
            for edge, count in zip(edges, series.buckets):
                running += count
                cumulative.append((edge, running))
            durations.add_metric(list(key), cumulative, series.sum)
        yield requests
        yield durations


# Routing -----------------------------------------------------------------------------------------


def _fqdn(host: str, namespace: str) -> str:
    """`web` / `web.ns` / `web.ns.svc` as Istio resolves them from `namespace`."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
    if len(parts) == 2:
        return f"{host}.{CLUSTER_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


def _number(value: Any, default: float = 0.0) -> float:
    """A number from an unvalidated field (the emulator, unlike Istio's webhook, stores anything)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _age(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = _meta(obj)
    return str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _string_match(spec: Any, value: str | None, ignore_case: bool = False) -> bool:
    """Istio's StringMatch; an empty one only asks for presence."""
    if value is None:
        return False
    if not isinstance(spec, Mapping) or not spec:
        return True
    if "exact" in spec:
        expected = str(spec["exact"])
        return value.lower() == expected.lower() if ignore_case else value == expected
    if "prefix" in spec:
        expected = str(spec["prefix"])
        return value.lower().startswith(expected.lower()) if ignore_case else value.startswith(expected)
    if "regex" in spec:
        try:
            return re.fullmatch(str(spec["regex"]), value) is not None  # Envoy matches the whole value
        except re.error:
            return False
    return False


_MATCH_FIELDS = {
    "name", "headers", "withoutHeaders", "uri", "method", "scheme", "authority", "queryParams",
    "ignoreUriCase", "gateways", "port", "statPrefix",
}


def _matches(match: Any, request: _Request, authority: str) -> bool:
    """One HTTPMatchRequest (all its conditions) against a simulated request."""
    if not isinstance(match, Mapping):
        return False
    if set(match) - _MATCH_FIELDS:
        return False  # sourceLabels, sourceNamespace, ...: these clients have none of that
    headers = request.headers
    for name, spec in (match.get("headers") or {}).items():
        if not _string_match(spec, headers.get(str(name).lower())):
            return False
    for name, spec in (match.get("withoutHeaders") or {}).items():
        if _string_match(spec, headers.get(str(name).lower())):
            return False
    ignore_case = bool(match.get("ignoreUriCase"))
    if "uri" in match and not _string_match(match["uri"], request.path, ignore_case):
        return False
    if "method" in match and not _string_match(match["method"], request.method):
        return False
    if "scheme" in match and not _string_match(match["scheme"], "http"):
        return False
    if "authority" in match and not _string_match(match["authority"], authority):
        return False
    for name, spec in (match.get("queryParams") or {}).items():
        if not _string_match(spec, request.query.get(str(name))):
            return False
    gateways = match.get("gateways")
    return not gateways or "mesh" in gateways


def _route_applies(route: Mapping[str, Any], request: _Request, authority: str) -> bool:
    matches = route.get("match")
    return not matches or any(_matches(match, request, authority) for match in matches)


@dataclass
class _Index:
    """The routing-relevant objects of the whole cluster, indexed once per change."""

    services: Mapping[str, Mapping[str, Any]]  # by FQDN
    service_list: Sequence[Mapping[str, Any]]
    virtual_services: dict[str, Mapping[str, Any]]  # by FQDN host; the oldest wins, as in Istio
    destination_rules: dict[str, list[Mapping[str, Any]]]  # by FQDN host
    pods: dict[tuple[str, str | None], list[ReadyPods]]  # by namespace and `app` label, and by namespace alone

    @classmethod
    def build(cls, cluster: ClusterEmulator, pods: Sequence[ReadyPods]) -> _Index:
        service_list = cluster.peek(SERVICES)
        services = {_fqdn(str(_meta(svc).get("name")), str(_meta(svc).get("namespace"))): svc for svc in service_list}
        virtual_services: dict[str, Mapping[str, Any]] = {}
        for vs in sorted(cluster.peek(VIRTUALSERVICES), key=_age):
            gateways = _spec(vs).get("gateways")
            if gateways and "mesh" not in gateways:
                continue  # only for traffic entering through a gateway
            for host in _spec(vs).get("hosts") or []:
                virtual_services.setdefault(_fqdn(str(host), str(_meta(vs).get("namespace"))), vs)
        rules: dict[str, list[Mapping[str, Any]]] = {}
        for dr in sorted(cluster.peek(DESTINATIONRULES), key=_age):
            host = _spec(dr).get("host")
            if host:
                rules.setdefault(_fqdn(str(host), str(_meta(dr).get("namespace"))), []).append(dr)
        by_app: dict[tuple[str, str | None], list[ReadyPods]] = {}
        for group in pods:  # selectors nearly always name the app: look among its pods only
            by_app.setdefault((group.namespace, None), []).append(group)
            if "app" in group.labels:
                by_app.setdefault((group.namespace, group.labels["app"]), []).append(group)
        return cls(services, service_list, virtual_services, rules, by_app)

    def subset_labels(self, host: str, subset: str, namespace: str) -> dict[str, str] | None:
        """The labels of `subset` in the DestinationRule for `host` (one in `namespace` first)."""
        candidates = sorted(self.destination_rules.get(host, []), key=lambda dr: _meta(dr).get("namespace") != namespace)
        for dr in candidates:
            for item in _spec(dr).get("subsets") or []:
                if item.get("name") == subset:
                    return {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
        return None

    def endpoints(self, namespace: str, labels: Mapping[str, str]) -> list[ReadyPods]:
        if not labels:
            return []  # a Service without selector has no endpoints of ours
        return [
            group for group in self.pods.get((namespace, labels.get("app")), [])
            if group.count > 0 and all(group.labels.get(k) == v for k, v in labels.items())
        ]


def _primary_services(services: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(namespace, app, Service) per app: clients call the Service named like the app."""
    by_app: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for svc in services:
        app = (_spec(svc).get("selector") or {}).get("app")
        if app:
            by_app.setdefault((str(_meta(svc).get("namespace") or ""), str(app)), []).append(svc)
    chosen = []
    for (namespace, app), candidates in sorted(by_app.items()):
        best = min(candidates, key=lambda svc: (
            _meta(svc).get("name") != app, "preview" in str(_meta(svc).get("name")), str(_meta(svc).get("name")),
        ))
        chosen.append((namespace, app, best))
    return chosen


# The simulator -----------------------------------------------------------------------------------


class TrafficSimulator:
    """Requests for every app with a Service, routed from the cluster's objects as they are now.

    `tick(seconds)` generates one step (tests call it directly with a seeded RNG); `async with`
    runs it every `tick_seconds` on the event loop until the block ends. `rate` is requests per
    second per app; `header_share` of them carry `canary: true`, `cookie_share` carry the
    `Cookie: {cookie}` header, each of `profiles` its own headers; the rest carry none.
    """

    def __init__(
        self,
        cluster: ClusterEmulator,
        rules: Rules,
        *,
        rate: float = 20.0,
        header_share: float = 0.1,
        cookie: str | None = None,
        cookie_share: float = 0.0,
        profiles: Sequence[RequestProfile] = (),
        registry: CollectorRegistry | None = None,
        tick_seconds: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.cluster, self.rules, self.rate, self.tick_seconds = cluster, rules, rate, tick_seconds
        classes = [RequestProfile(header_share, {"canary": "true"})]
        if cookie is not None:
            classes.append(RequestProfile(cookie_share, {"cookie": cookie}))
        classes.extend(profiles)
        if any(c.share < 0 for c in classes) or sum(c.share for c in classes) > 1 + 1e-9:
            raise ValueError("request shares must be >= 0 and add up to at most 1")
        rest = max(0.0, 1.0 - sum(c.share for c in classes))
        self._classes = [
            (c.share, _Request({k.lower(): v for k, v in c.headers.items()}, c.path, c.method.upper(), dict(c.query)))
            for c in [*classes, RequestProfile(rest)]
            if c.share > 0
        ]
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats = TrafficStats()
        self._rng = random.Random(seed)
        self._series: dict[Key, _Series] = {}
        self._latencies: dict[Behaviour, _Latency] = {}
        self._outcomes: dict[tuple[Key, Behaviour | str], _Outcome] = {}
        self._streams: list[_Stream] = []
        self._seen: tuple[int, list[ReadyPods]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.registry.register(_Collector(self))

    # Running ---------------------------------------------------------------------------------

    async def __aenter__(self) -> TrafficSimulator:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="traffic-simulator")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """Tick every `tick_seconds`; a late tick generates the traffic of the time that passed."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        due = last + self.tick_seconds
        failed = ""  # log a failure once, not every tick
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            try:
                self.tick(min(now - last, MAX_STEP))
            except Exception as error:  # e.g. an object the real API would have rejected: keep going
                if repr(error) != failed:
                    logger.exception("A traffic tick failed; the next one re-plans.")
                failed = repr(error)
                self._seen = None
            else:
                failed = ""
            last = now
            due = max(due + self.tick_seconds, now)

    def tick(self, seconds: float) -> int:
        """Generate and count `seconds` worth of requests for every app; returns how many."""
        started = time.perf_counter()
        self._refresh()
        rng, mean, total = self._rng, self.rate * seconds, 0
        for stream in self._streams:
            n = _poisson(rng, mean)
            if not n:
                continue
            total += n
            outcomes = stream.outcomes
            if len(outcomes) == 1:
                outcomes[0].serve(rng, n)
                continue
            if n > AGGREGATE_ABOVE:
                counts = _multinomial(rng, n, stream.probabilities)
            else:
                counts = [0] * len(outcomes)
                cumulative, rand, where = stream.cumulative, rng.random, bisect.bisect_right
                for _ in range(n):
                    counts[where(cumulative, rand())] += 1
            for outcome, k in zip(outcomes, counts):
                if k:
                    outcome.serve(rng, k)
        spent = time.perf_counter() - started
        stats = self.stats
        stats.ticks += 1
        stats.requests += total
        stats.busy_seconds += spent
        stats.max_tick_seconds = max(stats.max_tick_seconds, spent)
        return total

    # Reading -----------------------------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str, str, str], int]:
        """Requests so far by (app, namespace, version, status); zero series left out."""
        return {
            (*key, status): count
            for key, series in self._series.items()
            for status, count in series.statuses.items()
            if count
        }

    def mark(self) -> TrafficMark:
        return TrafficMark(time.monotonic(), self.totals())

    def since(self, mark: TrafficMark) -> dict[tuple[str, str, str, str], int]:
        """Requests after `mark`, by (app, namespace, version, status)."""
        now = self.totals()
        return {key: count - mark.totals.get(key, 0) for key, count in now.items() if count != mark.totals.get(key, 0)}

    def version_counts(
        self, app: str, namespace: str = "default", since: TrafficMark | None = None
    ) -> dict[str, VersionCounts]:
        """Requests and 5xx per version of one app (all time, or after `since`)."""
        counts = self.since(since) if since is not None else self.totals()
        result: dict[str, VersionCounts] = {}
        for (a, ns, version, status), count in counts.items():
            if a == app and ns == namespace:
                old = result.get(version, VersionCounts())
                result[version] = VersionCounts(old.requests + count, old.errors + (count if status.startswith("5") else 0))
        return result

    def first_error_at(self, app: str, namespace: str, version: str) -> datetime | None:
        """When this version first answered a 5xx (UTC), if it has."""
        series = self._series.get((app, namespace, version))
        return series.first_error_at if series is not None else None

    # Planning ----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-plan the routes when any object or ready pod changed since the last tick."""
        pods = self.cluster.ready_pods()
        seen = (self.cluster.resource_version, pods)
        if seen == self._seen:
            return
        self._seen = seen
        self.stats.replans += 1
        index = _Index.build(self.cluster, pods)
        for group in pods:  # a running version exports its series (at 0) before it gets traffic
            self._serve_outcome(group)
        streams = []
        for namespace, app, service in _primary_services(index.service_list):
            shares = self._plan(index, namespace, app, service)
            outcomes = [outcome for outcome, p in shares.items() if p > 0]
            if not outcomes:
                continue
            total = sum(shares[o] for o in outcomes)
            probabilities = [shares[o] / total for o in outcomes]
            cumulative = []
            running = 0.0
            for p in probabilities:
                running += p
                cumulative.append(running)
            cumulative[-1] = 1.0
            streams.append(_Stream(namespace, app, str(_meta(service).get("name")), outcomes, probabilities, cumulative))
        self._streams = streams

    def _series_for(self, key: Key) -> _Series:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(key)
        return series

    def _serve_outcome(self, group: ReadyPods) -> _Outcome:
        labels = group.labels
        key = (
            labels.get("app", ""), group.namespace,
            labels.get("version") or labels.get("app.kubernetes.io/version") or "unknown",
        )
        behaviour = self.rules.behaviour(group.image)
        outcome = self._outcomes.get((key, behaviour))
        if outcome is None:
            latency = self._latencies.get(behaviour)
            if latency is None:
                latency = self._latencies[behaviour] = _Latency(behaviour)
            outcome = self._outcomes[key, behaviour] = _Outcome(self._series_for(key), latency, behaviour.error_rate, "200")
        return outcome

    def _fail_outcome(self, namespace: str, app: str, status: int) -> _Outcome:
        key = (app, namespace, NO_POD)
        outcome = self._outcomes.get((key, str(status)))
        if outcome is None:
            outcome = self._outcomes[key, str(status)] = _Outcome(self._series_for(key), None, 1.0, str(status))
        return outcome

    def _plan(self, index: _Index, namespace: str, app: str, service: Mapping[str, Any]) -> dict[_Outcome, float]:
        """Where the app's requests end, with their shares."""
        name = str(_meta(service).get("name"))
        host = _fqdn(name, namespace)
        shares: dict[_Outcome, float] = {}

        def split(share: float, pods_namespace: str, labels: Mapping[str, str] | None) -> None:
            groups = index.endpoints(pods_namespace, labels) if labels is not None else []
            ready = sum(group.count for group in groups)
            if not ready:
                outcome = self._fail_outcome(namespace, app, 503)
                shares[outcome] = shares.get(outcome, 0.0) + share
                return
            for group in groups:
                outcome = self._serve_outcome(group)
                shares[outcome] = shares.get(outcome, 0.0) + share * group.count / ready

        vs = index.virtual_services.get(host)
        if vs is None:
            split(1.0, namespace, {str(k): str(v) for k, v in (_spec(service).get("selector") or {}).items()})
            return shares
        vs_namespace = str(_meta(vs).get("namespace") or namespace)
        routes = [route for route in _spec(vs).get("http") or [] if isinstance(route, Mapping)]
        for class_share, request in self._classes:
            route = next((r for r in routes if _route_applies(r, request, name)), None)
            if route is None:
                fail = self._fail_outcome(namespace, app, 404)  # Envoy: no route
                shares[fail] = shares.get(fail, 0.0) + class_share
                continue
            if route.get("directResponse") is not None:
                status = int(_number((route.get("directResponse") or {}).get("status"), 200))
                fail = self._fail_outcome(namespace, app, status)
                shares[fail] = shares.get(fail, 0.0) + class_share
                continue
            destinations = [d for d in route.get("route") or [] if isinstance(d, Mapping)]
            weights = [
                _number(d["weight"]) if d.get("weight") is not None else (100.0 if len(destinations) == 1 else 0.0)
                for d in destinations
            ]
            total = sum(w for w in weights if w > 0)
            if total <= 0:
                split(class_share, namespace, None)
                continue
            for destination, weight in zip(destinations, weights):
                if weight <= 0:
                    continue
                target = destination.get("destination") or {}
                target_host = _fqdn(str(target.get("host") or ""), vs_namespace)
                target_service = index.services.get(target_host)
                if target_service is None:
                    split(class_share * weight / total, namespace, None)
                    continue
                selector = {str(k): str(v) for k, v in (_spec(target_service).get("selector") or {}).items()}
                labels: dict[str, str] | None = selector
                if target.get("subset"):
                    subset = index.subset_labels(target_host, str(target["subset"]), vs_namespace)
                    if subset is None or any(selector.get(k, v) != v for k, v in subset.items()):
                        labels = None  # unknown subset, or one the Service's selector excludes
                    elif selector:  # a Service without selector has no endpoints, subset or not
                        labels = {**selector, **subset}
                split(class_share * weight / total, str(_meta(target_service).get("namespace") or namespace), labels)
        return shares
