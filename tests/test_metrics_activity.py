"""`measure` runs real PromQL, through prometheus-api-client, against a real Prometheus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import web
from temporalio.testing import ActivityEnvironment

from activities.metrics import measure
from deploy_models import (
    DEFAULT_ERROR_RATE_QUERY,
    DEFAULT_P99_QUERY,
    MeasureRequest,
    MetricQuery,
    MetricValue,
    render_query,
)
from sandbox.prometheus import free_port
from tests.prometheus_fixture import PrometheusLab


def rendered(name: str, template: str, app: str, version: str) -> MetricQuery:
    query = render_query(template, app=app, namespace="default", version=version, canary="", stable="")
    return MetricQuery(name=name, query=query)


async def run(url: str, *queries: MetricQuery, timeout: float = 5.0) -> list[MetricValue]:
    request = MeasureRequest(prometheus_url=url, queries=list(queries), timeout=timedelta(seconds=timeout))
    return await ActivityEnvironment().run(measure, request)


async def test_error_rate_is_the_measured_version_own(prometheus_lab: PrometheusLab) -> None:
    lab = prometheus_lab
    lab.declare("shop", "v2")
    lab.declare("shop", "v1")
    await lab.scraped()
    lab.serve("shop", "v2", 95)
    lab.serve("shop", "v2", 5, status="500")
    lab.serve("shop", "v1", 80)
    lab.serve("shop", "v1", 20, status="500")
    await lab.scraped()

    canary, stable = await run(
        lab.url,
        rendered("error-rate@canary", DEFAULT_ERROR_RATE_QUERY, "shop", "v2"),
        rendered("error-rate@stable", DEFAULT_ERROR_RATE_QUERY, "shop", "v1"),
    )

    assert canary.error is None and canary.value == pytest.approx(0.05)
    assert stable.error is None and stable.value == pytest.approx(0.20)
    assert canary.name == "error-rate@canary" and 'version="v2"' in canary.query


async def test_a_version_that_never_failed_has_an_error_rate_of_0_not_no_data(prometheus_lab: PrometheusLab) -> None:
    """A real exporter has no 5xx series until the first 5xx: the default query must read that as
    0, and still give no data when the version had no traffic at all."""
    lab = prometheus_lab
    lab.declare("till", "v2", statuses=("200",))
    await lab.scraped()
    lab.serve("till", "v2", 100)
    await lab.scraped()

    healthy, idle = await run(
        lab.url,
        rendered("error-rate@canary", DEFAULT_ERROR_RATE_QUERY, "till", "v2"),
        rendered("error-rate@idle", DEFAULT_ERROR_RATE_QUERY, "till", "v9"),
    )
    assert healthy.error is None and healthy.value == 0.0
    assert idle.error is None and idle.value is None


async def test_p99_falls_in_the_version_own_bucket(prometheus_lab: PrometheusLab) -> None:
    lab = prometheus_lab
    lab.declare("cart", "v2")
    lab.declare("cart", "v1")
    await lab.scraped()
    lab.serve("cart", "v2", 100, duration=0.2)  # bucket (0.1, 0.25]
    lab.serve("cart", "v1", 100, duration=0.03)  # bucket (0.025, 0.05]
    await lab.scraped()

    canary, stable = await run(
        lab.url,
        rendered("p99@canary", DEFAULT_P99_QUERY, "cart", "v2"),
        rendered("p99@stable", DEFAULT_P99_QUERY, "cart", "v1"),
    )

    # histogram_quantile interpolates linearly inside the bucket holding the 99th of 100.
    assert canary.value == pytest.approx(0.1 + 0.15 * 0.99)
    assert stable.value == pytest.approx(0.025 + 0.025 * 0.99)


async def test_no_data_nan_and_inf_are_no_value(prometheus_lab: PrometheusLab) -> None:
    lab = prometheus_lab
    lab.declare("idle", "v1")
    await lab.scraped()
    await lab.scraped()  # two samples, both 0: the rate is 0, the ratio 0/0

    absent, idle, infinite, scalar = await run(
        lab.url,
        rendered("no-traffic", DEFAULT_ERROR_RATE_QUERY, "shop", "v9"),
        rendered("idle", DEFAULT_ERROR_RATE_QUERY, "idle", "v1"),
        MetricQuery(name="inf", query="vector(1) / 0"),
        MetricQuery(name="scalar", query="scalar(vector(0.5))"),
    )

    assert (absent.value, absent.error) == (None, None)
    assert (idle.value, idle.error) == (None, None)
    assert (infinite.value, infinite.error) == (None, None)
    assert (scalar.value, scalar.error) == (0.5, None)


async def test_results_that_are_not_one_number_are_errors(prometheus_lab: PrometheusLab) -> None:
    several, matrix, invalid = await run(
        prometheus_lab.url,
        MetricQuery(name="several", query="up or vector(1)"),
        MetricQuery(name="matrix", query="up[1m]"),
        MetricQuery(name="error-rate", query="sum(rate(http_requests_total[1m])"),
    )

    assert several.value is None and several.error == (
        "several: query returned 2 series; aggregate it to one (e.g. sum(...))"
    )
    assert matrix.error is not None and matrix.error.startswith("matrix: query returned a range vector")
    assert invalid.value is None and invalid.error is not None
    assert invalid.error.startswith(f"error-rate: {prometheus_lab.url} answered 400 bad_data: ")
    assert "parse error" in invalid.error


async def test_prometheus_down_is_an_error_naming_the_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()

    results = await run(url, MetricQuery(name="error-rate", query="up"), MetricQuery(name="p99", query="up"))

    assert time.monotonic() - started < 1.0  # no retries with backoff
    assert [result.value for result in results] == [None, None]
    assert results[0].error == f"error-rate: {url} unreachable: NewConnectionError: " + (
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    assert results[1].error is not None and results[1].error.startswith(f"p99: {url} unreachable")


@pytest.fixture
async def broken_prometheus() -> AsyncIterator[str]:
    """Answers 503 (with Prometheus' JSON at /json, plain text at /text) or never (at /hang)."""
    release = asyncio.Event()

    async def json_503(request: web.Request) -> web.Response:
        body = {"status": "error", "errorType": "unavailable", "error": "too many queries"}
        return web.json_response(body, status=503)

    async def text_503(request: web.Request) -> web.Response:
        return web.Response(status=503, text="Service Unavailable")

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=504)

    app = web.Application()
    app.router.add_get("/json/api/v1/query", json_503)
    app.router.add_get("/text/api/v1/query", text_503)
    app.router.add_get("/hang/api/v1/query", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        release.set()
        await runner.cleanup()


async def test_503_is_an_error_with_what_prometheus_said(broken_prometheus: str) -> None:
    started = time.monotonic()

    (structured,) = await run(f"{broken_prometheus}/json", MetricQuery(name="error-rate", query="up"))
    (plain,) = await run(f"{broken_prometheus}/text", MetricQuery(name="p99", query="up"))

    assert time.monotonic() - started < 1.0  # the client's default would retry 503 with backoff
    assert structured.value is None
    assert structured.error == f"error-rate: {broken_prometheus}/json answered 503 unavailable: too many queries"
    assert plain.error == f"p99: {broken_prometheus}/text answered 503 Service Unavailable"


async def test_hung_prometheus_cannot_block_past_the_timeout(broken_prometheus: str) -> None:
    url = f"{broken_prometheus}/hang"
    started = time.monotonic()

    results = await run(url, MetricQuery(name="a", query="up"), MetricQuery(name="b", query="up"), timeout=0.3)

    assert time.monotonic() - started < 1.0  # queries run side by side, each within the timeout
    # Either the overall deadline or the socket's read timeout (also 0.3 s) ends each query first.
    for name, result in zip("ab", results):
        assert result.value is None and result.error is not None
        assert result.error.startswith(f"{name}: {url} ")
        assert "did not answer within 0.3s" in result.error or "read timeout=0.3" in result.error
