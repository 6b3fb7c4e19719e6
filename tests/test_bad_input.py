"""Bad input, through the CLI's `start`: exit code 2, a message naming the field, nothing started.

Every case runs `starter.py start` (in-process, `starter.main`) against a real Temporal dev
server, with a task queue of its own: a case that slipped past validation would start a workflow
there, and the last tests show that a good spec of every strategy does. PromQL is judged by a
real Prometheus.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

import starter
from tests.conftest import eventually
from tests.prometheus_fixture import PrometheusLab
from workflows import workflow_id

NAMESPACE = "bad-input"
NOWHERE = "http://127.0.0.1:1"  # nothing listens: the query check warns and goes on
DELETE = object()  # an override that removes the field

ERROR_RATE = (
    'sum(rate(http_requests_total{app="{{app}}",namespace="{{namespace}}",version="{{version}}",status=~"5.."}[1m]))'
    ' / sum(rate(http_requests_total{app="{{app}}",namespace="{{namespace}}",version="{{version}}"}[1m]))'
)


def analysis(url: str = NOWHERE, **check: Any) -> dict[str, Any]:
    return {"prometheus": {"url": url}, "interval": "5s", "checks": [{"name": "errors", "query": ERROR_RATE, **check}]}


def base(strategy: str, app: str = "shop", url: str = NOWHERE) -> dict[str, Any]:
    """A spec of `strategy` that is valid as it stands (the good-spec tests start it)."""
    document: dict[str, Any] = {"app": app, "namespace": NAMESPACE, "image": "shop:2.0", "strategy": {"type": strategy}}
    if strategy == "canary":
        document["strategy"]["canary"] = {
            "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]
        }
    if strategy in ("canary", "rolling", "recreate"):
        document["analysis"] = analysis(url, max=0.05)
    if strategy == "abTest":
        document["analysis"] = analysis(url, relative={"maxIncrease": 0.005})
    return document


def merged(document: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`document` with `overrides` merged in depth (lists replaced; DELETE removes a field)."""
    result = copy.deepcopy(document)
    for key, value in overrides.items():
        if value is DELETE:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def settings(strategy: str, **fields: Any) -> dict[str, Any]:
    """Overrides of `strategy.<strategy>`."""
    return {"strategy": {strategy: fields}}


@dataclass(frozen=True)
class Case:
    strategy: str
    overrides: dict[str, Any] | None  # merged into base(strategy)
    expected: str  # a substring of stderr that names the field and the problem
    text: str | None = None  # the file's text as it is, instead of a document

    def document(self) -> dict[str, Any]:
        return merged(base(self.strategy), self.overrides or {})

    def write(self, directory: Path) -> Path:
        path = directory / "spec.yaml"
        path.write_text(self.text if self.text is not None else yaml.safe_dump(self.document(), sort_keys=False))
        return path

    def workflow_id(self) -> str:
        """The id a run of this spec would have (the base's, when the spec has no usable names)."""
        document = self.document() if self.text is None else base(self.strategy)
        app, namespace = document.get("app"), document.get("namespace")
        if isinstance(app, str) and isinstance(namespace, str):
            return workflow_id(namespace, app)
        return workflow_id(NAMESPACE, "shop")


def weights(*steps: Any) -> dict[str, Any]:
    return settings("canary", steps=list(steps))


CASES = {
    # what the file is
    "not-yaml": Case("blueGreen", None, "is not valid YAML", text="app: [unclosed\nimage: shop:2.0\n"),
    "empty-file": Case("blueGreen", None, "(spec): is empty; it must be a mapping", text=""),
    "a-list": Case("canary", None, "(spec): is a list; it must be a mapping", text="- app: shop\n- image: shop:2.0\n"),
    "a-bare-string": Case("rolling", None, "(spec): is a string; it must be a mapping", text="deploy shop please\n"),
    # unknown fields, at several depths: rejected, with the field a typo meant
    "unknown-top-level": Case("blueGreen", {"replica": 3}, "replica: is not a known field (did you mean replicas?)"),
    "unknown-in-settings": Case(
        "canary", settings("canary", stpes=[]), "strategy.canary.stpes: is not a known field (did you mean steps?)"
    ),
    "unknown-in-a-step": Case(
        "canary",
        weights({"setWeight": 50}, {"pause": {"duraton": "5m"}}, {"setWeight": 100}),
        "strategy.canary.steps[1].pause.duraton: is not a known field (did you mean duration?)",
    ),
    "unknown-in-a-match": Case(
        "abTest",
        settings("abTest", match=[{"headers": {"canary": {"exactly": "true"}}}]),
        "strategy.abTest.match[0].headers.canary.exactly: is not a known field (did you mean exact?)",
    ),
    "unknown-in-a-check": Case(
        "rolling",
        {"analysis": analysis(max=0.05, maximum=0.1)},
        "analysis.checks[0].maximum: is not a known field (did you mean max?)",
    ),
    "unknown-in-recreate": Case("recreate", settings("recreate", replicas=2), "strategy.recreate.replicas: is not a known field"),
    # strategy and image
    "unknown-strategy": Case("blueGreen", {"strategy": {"type": "fast"}}, "strategy.type: 'fast' is not one of the choices"),
    "missing-image": Case("canary", {"image": DELETE}, "image: is required"),
    "empty-image": Case("recreate", {"image": ""}, "image: must not be empty"),
    # canary weights
    "weights-decreasing": Case(
        "canary",
        weights({"setWeight": 50}, {"pause": {}}, {"setWeight": 20}, {"setWeight": 100}),
        "strategy.canary.steps: step 2: setWeight 20 is lower than the previous weight 50",
    ),
    "weight-above-100": Case(
        "canary", weights({"setWeight": 150}), "strategy.canary.steps[0].setWeight: Input should be less than or equal to 100"
    ),
    "weight-zero": Case(
        "canary", weights({"setWeight": 0}, {"setWeight": 100}), "strategy.canary.steps[0].setWeight: Input should be greater than 0"
    ),
    "weight-negative": Case(
        "canary",
        weights({"setWeight": 10}, {"setWeight": -5}, {"setWeight": 100}),
        "strategy.canary.steps[1].setWeight: Input should be greater than 0",
    ),
    "never-reaches-100": Case(
        "canary",
        weights({"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 50}, {"pause": {"duration": "5m"}}),
        "strategy.canary.steps: the last setWeight is 50, so the plan never reaches 100%; "
        "add a setWeight: 100 step or set promoteFromLastWeight: true",
    ),
    "promote-flag-not-a-boolean": Case(
        "canary",
        settings("canary", promoteFromLastWeight="maybe"),
        "strategy.canary.promoteFromLastWeight: Input should be a valid boolean",
    ),
    "ab-unmatched-weight-100": Case(
        "abTest", settings("abTest", unmatchedWeight=100), "strategy.abTest.unmatchedWeight: Input should be less than or equal to 99"
    ),
    "ab-unmatched-weight-negative": Case(
        "abTest", settings("abTest", unmatchedWeight=-1), "strategy.abTest.unmatchedWeight: Input should be greater than or equal to 0"
    ),
    # names that are not DNS-1123
    "app-name": Case("canary", {"app": "My_Shop"}, "app: 'My_Shop' is not a DNS-1123 label"),
    "namespace-name": Case("rolling", {"namespace": "Prod"}, "namespace: 'Prod' is not a DNS-1123 label"),
    "active-service-name": Case(
        "blueGreen",
        settings("blueGreen", activeService="shop_svc"),
        "strategy.blueGreen.activeService: 'shop_svc' is not a DNS-1123 label",
    ),
    "preview-service-name": Case(
        "blueGreen",
        settings("blueGreen", previewService="-preview"),
        "strategy.blueGreen.previewService: '-preview' is not a DNS-1123 label",
    ),
    "virtual-service-name": Case(
        "canary",
        settings("canary", trafficRouting={"istio": {"virtualService": {"name": "Shop VS"}, "destinationRule": {"name": "shop"}}}),
        "strategy.canary.trafficRouting.istio.virtualService.name: 'Shop VS' is not a DNS-1123 subdomain",
    ),
    "subset-name": Case(
        "abTest",
        settings(
            "abTest",
            trafficRouting={"istio": {"virtualService": {"name": "shop"}, "destinationRule": {"name": "shop", "canarySubsetName": "v 2"}}},
        ),
        "strategy.abTest.trafficRouting.istio.destinationRule.canarySubsetName: 'v 2' is not a Kubernetes label value",
    ),
    "deployment-name": Case(
        "rolling", settings("rolling", deployment="Shop"), "strategy.rolling.deployment: 'Shop' is not a DNS-1123 label"
    ),
    "container-name": Case(
        "recreate", settings("recreate", container="web_server"), "strategy.recreate.container: 'web_server' is not a DNS-1123 label"
    ),
    # durations, unparsable and negative, wherever they occur
    "scale-down-delay-unparsable": Case(
        "blueGreen", settings("blueGreen", scaleDownDelay="10x"), "strategy.blueGreen.scaleDownDelay: '10x' is not a duration"
    ),
    "scale-down-delay-negative": Case(
        "blueGreen", settings("blueGreen", scaleDownDelay="-5m"), "strategy.blueGreen.scaleDownDelay: '-5m' is negative"
    ),
    "approval-timeout-unparsable": Case(
        "blueGreen", settings("blueGreen", approval={"timeout": "soon"}), "strategy.blueGreen.approval.timeout: 'soon' is not a duration"
    ),
    "progress-deadline-negative": Case(
        "blueGreen", settings("blueGreen", progressDeadline="-1m"), "strategy.blueGreen.progressDeadline: '-1m' is negative"
    ),
    "pause-unparsable": Case(
        "canary",
        weights({"setWeight": 50}, {"pause": {"duration": "5 minutes"}}, {"setWeight": 100}),
        "strategy.canary.steps[1].pause.duration: '5 minutes' is not a duration",
    ),
    "pause-negative": Case(
        "canary",
        weights({"setWeight": 50}, {"pause": {"duration": "-10m"}}, {"setWeight": 100}),
        "strategy.canary.steps[1].pause.duration: '-10m' is negative",
    ),
    "smoke-timeout-negative": Case(
        "canary",
        settings("canary", smokeTest={"url": "http://shop/health", "timeout": "-1s"}),
        "strategy.canary.smokeTest.timeout: '-1s' is negative",
    ),
    "analysis-interval-unparsable": Case(
        "canary", {"analysis": {"interval": "often"}}, "analysis.interval: 'often' is not a duration"
    ),
    "ab-duration-negative": Case("abTest", settings("abTest", duration="-10m"), "strategy.abTest.duration: '-10m' is negative"),
    "ab-pause-unparsable": Case(
        "abTest", settings("abTest", pause={"duration": "a while"}), "strategy.abTest.pause.duration: 'a while' is not a duration"
    ),
    "analysis-window-negative": Case(
        "rolling", settings("rolling", analysisWindow="-5m"), "strategy.rolling.analysisWindow: '-5m' is negative"
    ),
    "rolling-deadline-unparsable": Case(
        "rolling", settings("rolling", progressDeadline="10"), "strategy.rolling.progressDeadline: '10' is not a duration"
    ),
    "recreate-pause-negative": Case(
        "recreate", settings("recreate", pause={"duration": "-1h"}), "strategy.recreate.pause.duration: '-1h' is negative"
    ),
    "smoke-interval-negative": Case(
        "recreate",
        settings("recreate", smokeTest={"url": "http://shop/health", "interval": "-2s"}),
        "strategy.recreate.smokeTest.interval: '-2s' is negative",
    ),
    # thresholds
    "neither-min-nor-max": Case("canary", {"analysis": analysis()}, "analysis.checks[0]: check 'errors' needs max, min or relative"),
    "min-above-max": Case(
        "rolling", {"analysis": analysis(min=0.5, max=0.1)}, "analysis.checks[0]: check 'errors': min 0.5 is above max 0.1"
    ),
    "relative-without-bounds": Case(
        "abTest",
        {"analysis": analysis(relative={})},
        "analysis.checks[0].relative: needs maxIncrease, maxRatio, minIncrease or minRatio",
    ),
    "prometheus-url": Case(
        "recreate",
        {"analysis": {"prometheus": {"url": "prometheus:9090"}}},
        "analysis.prometheus.url: 'prometheus:9090' is not an http:// or https:// URL",
    ),
    # smoke-test URLs that are not URLs
    "smoke-url-blue-green": Case(
        "blueGreen",
        settings("blueGreen", smokeTest={"url": "shop/health"}),
        "strategy.blueGreen.smokeTest.url: 'shop/health' is not an http:// or https:// URL",
    ),
    "smoke-url-canary": Case(
        "canary",
        settings("canary", smokeTest={"url": "ftp://shop/health"}),
        "strategy.canary.smokeTest.url: 'ftp://shop/health' is not an http:// or https:// URL",
    ),
    "smoke-url-ab": Case(
        "abTest",
        settings("abTest", smokeTest={"url": "not a url"}),
        "strategy.abTest.smokeTest.url: 'not a url' is not an http:// or https:// URL",
    ),
    "smoke-url-rolling": Case(
        "rolling", settings("rolling", smokeTest={"url": "http://"}), "strategy.rolling.smokeTest.url: 'http://' is not an http"
    ),
    "smoke-url-recreate": Case(
        "recreate",
        settings("recreate", smokeTest={"url": "http://{host}/health"}),
        "strategy.recreate.smokeTest.url: 'http://{host}/health' uses an unknown placeholder 'host'",
    ),
}


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Run `starter.main(argv)` against the dev server; gives (exit code, stdout, stderr)."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", dev_env.client.namespace)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(starter.main, list(argv))  # main runs its own event loop
        out, err = capsys.readouterr()
        return code, out, err

    yield run


async def listed(client: Client, task_queue: str) -> list[str]:
    """The ids of the workflows started on `task_queue`, as visibility lists them."""
    return [execution.id async for execution in client.list_workflows(f'TaskQueue = "{task_queue}"')]


async def exists(client: Client, run_id: str) -> bool:
    """Whether a workflow `run_id` was ever started (strongly consistent, unlike a listing)."""
    try:
        await client.get_workflow_handle(run_id).describe()
        return True
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        return False


async def end(client: Client, run_id: str) -> None:
    """Terminate a run a test started (no worker serves its task queue), if it was started."""
    if await exists(client, run_id):
        await client.get_workflow_handle(run_id).terminate("test over")


def test_the_table_covers_every_strategy() -> None:
    assert len(CASES) >= 30
    assert {case.strategy for case in CASES.values()} == {"blueGreen", "canary", "abTest", "rolling", "recreate"}


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_exits_2_naming_the_field_and_starts_nothing(
    name: str, cli: Any, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    case = CASES[name]
    task_queue = f"bad-input-{uuid.uuid4()}"
    code, out, err = await cli("start", str(case.write(tmp_path)), "--task-queue", task_queue)
    assert code == 2, (out, err)
    assert case.expected in err, err
    assert "started" not in out
    assert not await exists(dev_env.client, case.workflow_id())
    assert await listed(dev_env.client, task_queue) == []


BAD_QUERIES = {
    "unclosed-parenthesis": ('sum(rate(http_requests_total{app="{{app}}"}[1m])', "parse error: unclosed left parenthesis"),
    "instant-vector-to-rate": (
        'rate(http_requests_total{app="{{app}}",version="{{version}}"})',
        'expected type range vector in call to function "rate", got instant vector',
    ),
    "unknown-function": ('ratee(http_requests_total{app="{{app}}"}[1m])', 'unknown function with name "ratee"'),
    "bad-operator": ('http_requests_total{namespace="{{namespace}}"} >>> 1', "parse error"),
}


def with_second_check(document: dict[str, Any], query: str) -> dict[str, Any]:
    """`document` with a second check whose query is `query` (the first is good)."""
    second = {"name": "second", "query": query, "max": 1.0}
    if document["strategy"]["type"] == "abTest":
        second["relative"] = {"maxIncrease": 0}
    document["analysis"]["checks"].append(second)
    return document


@pytest.mark.parametrize(
    ("strategy", "bad"),
    [
        ("canary", "unclosed-parenthesis"),
        ("abTest", "instant-vector-to-rate"),
        ("rolling", "unknown-function"),
        ("recreate", "bad-operator"),
    ],
)
async def test_a_query_prometheus_refuses_exits_2_before_anything_starts(
    strategy: str, bad: str, cli: Any, dev_env: WorkflowEnvironment, prometheus_lab: PrometheusLab, tmp_path: Path
) -> None:
    query, refusal = BAD_QUERIES[bad]
    app = f"promql-{strategy.lower()}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(with_second_check(base(strategy, app, prometheus_lab.url), query)))
    task_queue = f"bad-query-{uuid.uuid4()}"
    expected = f"analysis.checks[1].query: Prometheus at {prometheus_lab.url}: "

    for command in (["plan", str(spec)], ["start", str(spec), "--task-queue", task_queue]):
        code, out, err = await cli(*command)
        assert code == 2, (out, err)
        assert expected in err and refusal in err, err
        assert "analysis.checks[0]" not in err  # the good query was accepted
    assert not await exists(dev_env.client, workflow_id(NAMESPACE, app))
    assert await listed(dev_env.client, task_queue) == []

    # The same spec, told not to ask: it starts (the run's analysis would report the query).
    code, out, err = await cli("start", str(spec), "--task-queue", task_queue, "--no-check-queries")
    assert code == 0, (out, err)
    await end(dev_env.client, workflow_id(NAMESPACE, app))


GOOD = {
    "blueGreen": {},
    "canary": {},
    "canary-promoting-from-50": settings(
        "canary", promoteFromLastWeight=True, steps=[{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50}]
    ),
    "abTest": {},
    "rolling": {},
    "recreate": {},
}


@pytest.mark.parametrize("name", list(GOOD))
async def test_a_good_spec_of_every_strategy_is_started(
    name: str, cli: Any, dev_env: WorkflowEnvironment, prometheus_lab: PrometheusLab, tmp_path: Path
) -> None:
    """The control: the same path with valid input starts a run (its queries accepted by Prometheus)."""
    strategy = name.split("-")[0]
    app = f"good-{name.lower()}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(merged(base(strategy, app, prometheus_lab.url), GOOD[name])))
    task_queue = f"good-input-{uuid.uuid4()}"
    run_id = workflow_id(NAMESPACE, app)

    if name == "canary-promoting-from-50":
        code, out, err = await cli("plan", str(spec))
        assert code == 0, err
        assert "jumps from 50% to 100% of traffic at once" in out
    code, out, err = await cli("start", str(spec), "--task-queue", task_queue)
    try:
        assert code == 0, (out, err)
        assert f"started {run_id}" in out
        assert "warning" not in err, err  # Prometheus was asked, and accepted every query
        assert await exists(dev_env.client, run_id)
        assert await eventually(lambda: listed(dev_env.client, task_queue), what="the run in visibility") == [run_id]
    finally:
        await end(dev_env.client, run_id)


async def test_an_unreachable_prometheus_warns_and_starts(cli: Any, dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """The worker may reach a Prometheus the CI runner cannot: one warning line, and the run starts."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base("canary", "unreachable-prometheus", NOWHERE)))
    run_id = workflow_id(NAMESPACE, "unreachable-prometheus")
    code, out, err = await cli("start", str(spec), "--task-queue", f"unreachable-{uuid.uuid4()}")
    try:
        assert code == 0, (out, err)
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"queries not checked: Prometheus at {NOWHERE} unreachable" in warnings[0], err
        assert f"started {run_id}" in out
    finally:
        await end(dev_env.client, run_id)
