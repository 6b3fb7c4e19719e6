"""Secrets by reference: smoke-test headers and webhook URLs read by the activity, never in the history."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes.aio import client
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.notify import Notifier
from activities.secrets import Secrets
from activities.smoke import SmokeTester
from deploy_models import DeploymentInput, HeaderValue, Outcome, SecretRef, SmokeCheck, parse_spec
from sandbox.cluster import serve_cluster, write_kubeconfig
from tests.conftest import worker_for_test
from tests.fakes import FakeCluster
from tests.test_notify_activity import notification
from workflows.blue_green import BlueGreenWorkflow
from worker import kubernetes_api

TOKEN = "tok-7f3a9c"  # what the app behind the smoke test expects
API_KEY = "key-19e4b2"


@pytest.fixture
async def app_behind_auth() -> AsyncIterator[str]:
    """An app whose health endpoint answers 200 only with both credentials, and 401 otherwise."""

    async def health(request: web.Request) -> web.Response:
        good = request.headers.get("Authorization") == f"Bearer {TOKEN}" and request.headers.get("X-Api-Key") == API_KEY
        return web.Response(status=200 if good else 401)

    app = web.Application()
    app.router.add_get("/health", health)
    async with serving(app) as url:
        yield f"{url}/health"


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free local port, for as long as the block lasts."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def kubernetes(tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    """The emulated API with a Secret `smoke` (key `api-key`) in `default`."""
    async with serve_cluster(rollout_seconds=0.1) as (_, url):
        config = tmp_path / "kubeconfig"
        write_kubeconfig(config, url)
        async with await kubernetes_api(str(config)) as api:
            await client.CoreV1Api(api).create_namespaced_secret(
                namespace="default",
                body={"metadata": {"name": "smoke"}, "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()}},
            )
            yield api


HEADERS = {
    "Authorization": {"valueFrom": {"env": "SMOKE_TOKEN"}},
    "X-Api-Key": {"valueFrom": {"secretKeyRef": {"name": "smoke", "key": "api-key"}}},
}


def check(url: str, headers: dict[str, Any] = HEADERS) -> SmokeCheck:
    return SmokeCheck.model_validate(
        {"url": url, "expectStatus": 200, "timeout": "2s", "namespace": "default", "headers": headers}
    )


async def test_headers_are_read_from_the_environment_and_a_kubernetes_secret(
    app_behind_auth: str, kubernetes: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOKE_TOKEN", f"Bearer {TOKEN}")
    tester = SmokeTester(Secrets(kubernetes))
    assert (await ActivityEnvironment().run(tester.smoke_test, check(app_behind_auth))).status == 200

    plain = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": "wrong"}
    with pytest.raises(ApplicationError, match="answered 401"):
        await ActivityEnvironment().run(tester.smoke_test, check(app_behind_auth, plain))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X": {"valueFrom": {"env": "NOT_SET_ANYWHERE"}}}, "header X: the worker has no environment variable NOT_SET_ANYWHERE"),
        ({"X": {"valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}}, "header X: Secret default/absent does not exist"),
        ({"X": {"valueFrom": {"secretKeyRef": {"name": "smoke", "key": "token"}}}}, "header X: Secret default/smoke has no key 'token'"),
    ],
)
async def test_a_missing_secret_is_a_clear_error_retrying_cannot_fix(
    app_behind_auth: str, kubernetes: client.ApiClient, headers: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApplicationError) as error:
        await ActivityEnvironment().run(SmokeTester(Secrets(kubernetes)).smoke_test, check(app_behind_auth, headers))
    assert error.value.type == "SecretUnavailable" and error.value.non_retryable and message in error.value.message


async def test_a_webhook_url_from_a_kubernetes_secret(kubernetes: client.ApiClient) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serving(app) as url:
        secret = {"url": base64.b64encode(f"{url}/hook".encode()).decode()}
        await client.CoreV1Api(kubernetes).create_namespaced_secret(
            namespace="default", body={"metadata": {"name": "chat"}, "data": secret}
        )
        webhook = {"urlFrom": {"secretKeyRef": {"name": "chat", "key": "url"}}}
        delivered = await ActivityEnvironment().run(Notifier(secrets=Secrets(kubernetes)).notify, notification(webhooks=[webhook]))
    assert delivered == ["generic webhook from Secret chat key url"] and len(received) == 1


def test_a_reference_names_exactly_one_source() -> None:
    from deploy_models import SpecError

    for header, expected in [
        ({"valueFrom": {}}, "set exactly one of env and secretKeyRef"),
        ({"value": "a", "valueFrom": {"env": "A"}}, "set exactly one of value and valueFrom"),
        ({"valueFrom": {"env": "1BAD"}}, "'1BAD' is not an environment variable name"),
        ({"valueFrom": {"secretKeyRef": {"name": "Smoke", "key": "k"}}}, "'Smoke' is not a DNS-1123 subdomain"),
    ]:
        with pytest.raises(SpecError) as error:
            parse_spec(spec("http://app/health", {"X-Token": header}))
        assert "strategy.blueGreen.smokeTest.headers.X-Token" in str(error.value) and expected in str(error.value)
    with pytest.raises(SpecError, match="'Bad Header' is not an HTTP header name"):
        parse_spec(spec("http://app/health", {"Bad Header": "1"}))
    assert HeaderValue.model_validate("plain") == HeaderValue(value="plain")
    assert SecretRef(env="A").describe() == "$A"


def readable(history: WorkflowHistory) -> str:
    """The history as JSON with every payload's data decoded from base64, so that text in it shows."""
    text = history.to_json()
    decoded = [base64.b64decode(data).decode(errors="replace") for data in re.findall(r'"data":\s*"([A-Za-z0-9+/=]*)"', text)]
    assert decoded, "no payload found: the pattern no longer matches the history's JSON"
    return "\n".join([text, *decoded])


def spec(url: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "app": "myapp",
        "image": "myapp:2.0",
        "strategy": {"type": "blueGreen", "blueGreen": {"scaleDownDelay": "0s", "smokeTest": {"url": url, "headers": headers}}},
    }


async def test_the_history_holds_the_reference_never_the_value(
    time_skipping_env: WorkflowEnvironment,
    task_queue: str,
    app_behind_auth: str,
    kubernetes: client.ApiClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole blue/green run whose smoke test sends both secrets: the run passes (so they were
    sent), and neither value is anywhere in its history."""
    monkeypatch.setenv("SMOKE_TOKEN", f"Bearer {TOKEN}")
    cluster = FakeCluster(services={"myapp": "blue"}, deployments={"myapp-blue": "myapp:1.0"})
    activities = [a for a in cluster.activities() if a != cluster.smoke_test] + [SmokeTester(Secrets(kubernetes)).smoke_test]
    async with worker_for_test(time_skipping_env, task_queue, [BlueGreenWorkflow], activities):
        handle = await time_skipping_env.client.start_workflow(
            BlueGreenWorkflow.run,
            DeploymentInput(spec=parse_spec(spec(app_behind_auth, HEADERS)), requested_by="ci"),
            id=f"deploy-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        result = await handle.result()
        history = readable(await handle.fetch_history())
    assert result.outcome == Outcome.PROMOTED and cluster.services["myapp"] == "green"
    assert "SMOKE_TOKEN" in history and "api-key" in history  # the references
    assert TOKEN not in history and API_KEY not in history  # never the values (nor base64 of them)
    assert base64.b64encode(API_KEY.encode()).decode() not in history
