"""End to end on the sandbox stack for rolling, recreate and A/B testing: the Temporal dev server,
the worker as a process of its own, the simulated cluster with its traffic, a real Prometheus.

What is asserted is what a user would check: the cluster as the run left it, and the record.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from deploy_models import Outcome
from sandbox.cluster import DEPLOYMENTS, VIRTUALSERVICES
from tests.test_e2e_sandbox import (  # noqa: F401 (stack: the fixture)
    ERROR_RATE,
    INTERVAL_SECONDS,
    RATE_WINDOW_SECONDS,
    SCRAPE_SECONDS,
    Stack,
    stack,
)

TIMEOUT = 120


def health(stack: Stack) -> str:
    return f"{stack.sandbox.kube_url}/api/v1/namespaces/{{namespace}}/services/{{service}}:80/proxy/health"


def in_place(stack: Stack, kind: str, app: str, image: str, **settings: Any) -> dict[str, Any]:
    return {
        "app": app,
        "image": image,
        "replicas": 2,
        "strategy": {
            "type": kind,
            kind: {"smokeTest": {"url": health(stack), "retries": 1, "interval": "1s"}, "progressDeadline": "5s", **settings},
        },
    }


def image_of(stack: Stack, name: str) -> str:
    return stack.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"][0]["image"]


async def run(stack: Stack, document: dict[str, Any], image: str | None = None) -> Any:
    return await asyncio.wait_for((await stack.deploy(document, image=image)).result(), timeout=TIMEOUT)


async def test_rolling_update_and_its_undo(stack: Stack) -> None:
    document = in_place(stack, "rolling", "roll", "roll:2.0", maxSurge=1, maxUnavailable=0)
    first = await run(stack, document, image="roll:1.0")
    assert first.outcome == Outcome.PROMOTED, first.reason  # a first deployment creates `roll`

    result = await run(stack, document)
    assert result.outcome == Outcome.PROMOTED, result.reason
    deployment = stack.get(DEPLOYMENTS, "roll")
    assert image_of(stack, "roll") == "roll:2.0"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    before = copy.deepcopy(deployment["spec"]["template"])

    # pods that never become ready: the template goes back exactly, and the run waits for it
    failed = await run(stack, document, image="roll:3.0-crash")
    assert failed.outcome == Outcome.ROLLED_BACK and "progress deadline" in failed.reason
    after = stack.get(DEPLOYMENTS, "roll")
    assert after["spec"]["template"] == before
    assert after["status"].get("readyReplicas") == 2 and after["status"]["observedGeneration"] == after["metadata"]["generation"]
    assert [e.kind for e in failed.events].count("rolledBack") == 1


async def test_recreate_reports_its_downtime_and_brings_the_old_version_back(stack: Stack) -> None:
    document = in_place(stack, "recreate", "rec", "rec:2.0")
    assert (await run(stack, document, image="rec:1.0")).outcome == Outcome.PROMOTED

    result = await run(stack, document)
    assert result.outcome == Outcome.PROMOTED, result.reason
    downtime = result.downtime
    # the emulated pods take 0.5 s to become ready: measured by polling, give or take a poll
    assert downtime is not None and downtime.seconds is not None and 0.3 <= downtime.seconds <= 5
    assert "downtime" in result.reason and image_of(stack, "rec") == "rec:2.0"

    failed = await run(stack, document, image="rec:3.0-crash")
    assert failed.outcome == Outcome.ROLLED_BACK
    assert image_of(stack, "rec") == "rec:2.0" and stack.get(DEPLOYMENTS, "rec")["spec"]["replicas"] == 2
    assert stack.get(DEPLOYMENTS, "rec")["status"].get("readyReplicas") == 2
    assert failed.downtime is not None and failed.downtime.seconds is not None  # until the old version served again


def ab_test(stack: Stack, image: str) -> dict[str, Any]:
    return {
        "app": "abapp",
        "image": image,
        "replicas": 2,
        "strategy": {
            "type": "abTest",
            "abTest": {"duration": "20s", "smokeTest": {"url": health(stack)}, "progressDeadline": "30s"},
        },
        "analysis": {
            "prometheus": {"url": stack.sandbox.prometheus_url},
            "interval": f"{INTERVAL_SECONDS}s",
            "inconclusiveLimit": 10,
            "checks": [{"name": "error-rate", "query": ERROR_RATE, "relative": {"maxIncrease": 0.02}}],
        },
    }


async def test_ab_test_by_header(stack: Stack) -> None:
    first = await run(stack, ab_test(stack, "abapp:1.0"))
    assert first.outcome == Outcome.PROMOTED and "first deployment" in first.reason
    routes_before = copy.deepcopy(stack.get(VIRTUALSERVICES, "abapp")["spec"])

    # B answers 20% errors to the requests with `canary: true`: worse than A, rolled back
    worse = await run(stack, ab_test(stack, "abapp:2.0-bad"))
    assert worse.outcome == Outcome.ROLLED_BACK, worse.reason
    assert "more than 0.02 above v1's" in worse.reason
    failed = worse.failed_measurement
    assert failed is not None and failed.checks[0].baseline is not None and failed.checks[0].baseline < 0.02
    assert stack.get(VIRTUALSERVICES, "abapp")["spec"] == routes_before  # the route removed, nothing else changed
    assert stack.get(DEPLOYMENTS, "abapp-canary")["spec"]["replicas"] == 0
    assert image_of(stack, "abapp-stable") == "abapp:1.0"

    # B again (same subset, v2), good now: once the bad one's errors have left the rate window
    await asyncio.sleep(RATE_WINDOW_SECONDS + SCRAPE_SECONDS)
    mark = stack.sandbox.traffic.mark()
    good = await run(stack, ab_test(stack, "abapp:2.0"))
    assert good.outcome == Outcome.PROMOTED, good.reason
    assert "error-rate B" in good.reason and "vs A" in good.reason
    assert image_of(stack, "abapp-stable") == "abapp:2.0"
    assert stack.get(VIRTUALSERVICES, "abapp")["spec"] == routes_before
    counts = stack.sandbox.traffic.version_counts("abapp", since=mark)
    # only the matching requests (a tenth of the traffic carries the header) went to B
    assert 0 < counts["v2"].requests < counts["v1"].requests
