"""The worker's own metrics endpoint and its notifications, on the real dev server.

The worker is the one `worker.py` builds (its Temporal runtime serving Prometheus metrics, the real
`notify` activity posting to a local receiver); the cluster and Prometheus queries are faked by
name. After the runs, the endpoint is scraped as Prometheus would.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.notify import Notifier, worker_webhooks
from deploy_models import Decision, DeploymentResult, Outcome, parse_spec
from starter import start_deployment
from sandbox.cluster import write_kubeconfig
from sandbox.prometheus import free_port
from tests.conftest import eventually
from tests.fakes import FakeCluster
from tests.webhooks import Receiver, webhook_receiver
from worker import connect_temporal, metrics_runtime
from workflows import WORKFLOWS


@dataclass
class Metered:
    client: Client
    metrics_url: str
    cluster: FakeCluster
    receiver: Receiver
    task_queue: str

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample: (name, labels) → value."""
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as response:
            text = await response.text()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def value(self, name: str, **labels: str) -> float:
        """The sum over the samples of `name` that carry `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(value for (sample, found), value in (await self.scrape()).items() if sample == name and wanted <= found)


@pytest.fixture
async def metered(dev_env: WorkflowEnvironment, task_queue: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Metered]:
    port = free_port()
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    client = await connect_temporal(metrics_runtime("127.0.0.1", port))
    cluster = FakeCluster()
    async with webhook_receiver() as receiver:
        monkeypatch.setenv("TIDEGATE_TEST_SLACK_URL", f"{receiver.url}/slack")
        notifier = Notifier(worker_webhooks([f"{receiver.url}/worker"]), ui_url="http://ui.example:8080")
        activities = [*[a for a in cluster.activities() if a != cluster.notify], notifier.notify]
        async with Worker(client, task_queue=task_queue, workflows=list(WORKFLOWS.values()), activities=activities):
            yield Metered(client, f"http://127.0.0.1:{port}/metrics", cluster, receiver, task_queue)


def canary(app: str, *steps: dict[str, Any]) -> Any:
    return parse_spec({
        "app": app,
        "image": f"{app}:2.0",
        "strategy": {"type": "canary", "canary": {"steps": list(steps), "promoteFromLastWeight": True}},
        "analysis": {"prometheus": {"url": "http://prometheus:9090"}},
        "notifications": {"webhooks": [{"urlFrom": {"env": "TIDEGATE_TEST_SLACK_URL"}, "format": "slack", "events": ["rolledBack"]}]},
    })


async def start(metered: Metered, spec: Any) -> WorkflowHandle[Any, DeploymentResult]:
    metered.cluster.deployments[f"{spec.app}-stable"] = f"{spec.app}:1.0"
    return await start_deployment(metered.client, spec, requested_by="ci-bot", task_queue=metered.task_queue)


async def test_tidegate_and_sdk_metrics_after_runs(metered: Metered) -> None:
    good, bad = f"good{uuid.uuid4().hex[:6]}", f"bad{uuid.uuid4().hex[:6]}"

    # a canary paused at 30% for a person: the weight gauge, then the approval wait
    handle = await start(metered, canary(good, {"setWeight": 30}, {"pause": {}}))

    async def weight_shown() -> bool:
        return await metered.value("tidegate_canary_weight", app=good, app_namespace="default") == 30

    await eventually(weight_shown, what="the canary weight gauge at 30", timeout=30)
    await handle.signal("approve", Decision(by="alice"))
    assert (await handle.result()).outcome == Outcome.PROMOTED

    # a canary whose error rate breaches: rolled back by the analysis
    metered.cluster.metrics = lambda name, weight, at: 0.05 if name.startswith("error-rate") else 0.2
    result = await (await start(metered, canary(bad, {"setWeight": 20}, {"analysis": {}}))).result()
    assert result.outcome == Outcome.ROLLED_BACK

    async def counted() -> bool:
        return await metered.value("tidegate_deployments_finished_total", strategy="canary") == 2

    await eventually(counted, what="both runs counted", timeout=30)
    assert await metered.value("tidegate_deployments_started_total", strategy="canary") == 2
    assert await metered.value("tidegate_deployments_finished_total", strategy="canary", outcome="promoted") == 1
    assert await metered.value("tidegate_deployments_finished_total", strategy="canary", outcome="rolledBack") == 1
    assert await metered.value("tidegate_rollbacks_total", strategy="canary", reason="analysis") == 1
    assert await metered.value("tidegate_breach_to_rollback_seconds_count", strategy="canary") == 1
    assert await metered.value("tidegate_approval_wait_seconds_count", strategy="canary") == 1
    assert await metered.value("tidegate_canary_weight", app=bad, app_namespace="default") == 0  # put back
    # the Temporal SDK's own metrics, on the same endpoint
    assert await metered.value("temporal_workflow_completed_total", task_queue=metered.task_queue) == 2
    assert await metered.value("temporal_activity_execution_latency_count", task_queue=metered.task_queue) > 0

    # notifications: the worker's webhook got every event of both runs; the spec's Slack webhook
    # (its URL a secret in the worker's environment) only the rollback
    events = [(post["app"], post["event"]) for post in metered.receiver.posts("/worker")]
    assert events == [
        (good, "started"), (good, "awaitingApproval"), (good, "promoted"), (bad, "started"), (bad, "rolledBack"),
    ]
    assert metered.receiver.posts("/worker")[0]["url"].startswith("http://ui.example:8080/namespaces/default/workflows/")
    (slack,) = metered.receiver.posts("/slack")
    assert slack["text"].startswith(f"*{bad}* (default) canary → `{bad}:2.0`: *rolled back*")
    history = await metered.client.get_workflow_handle(f"deploy-default-{bad}").fetch_history()
    recorded = b"".join(event.SerializeToString() for event in history.events)  # payloads as stored
    assert b"TIDEGATE_TEST_SLACK_URL" in recorded and metered.receiver.url.encode() not in recorded


async def test_a_retried_notification_reaches_each_webhook_once(metered: Metered) -> None:
    """On the real server, a retry skips the webhooks an earlier attempt reached."""
    app = f"flaky{uuid.uuid4().hex[:6]}"
    metered.receiver.failures["/slack"] = 1  # the spec's webhook fails once; the worker's does not
    metered.cluster.metrics = lambda name, weight, at: 0.05 if name.startswith("error-rate") else 0.2
    handle = await start(metered, canary(app, {"setWeight": 20}, {"analysis": {}}))
    assert (await handle.result()).outcome == Outcome.ROLLED_BACK
    assert [post["event"] for post in metered.receiver.posts("/worker") if post["app"] == app] == ["started", "rolledBack"]
    assert len(metered.receiver.posts("/slack")) == 1


async def test_the_worker_process_serves_metrics_on_its_port(dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path) -> None:
    """`python worker.py --metrics-port`, as the image and the manifests run it."""
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")  # read at start; nothing is deployed
    environment = {
        **os.environ,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TIDEGATE_METRICS_PORT": str(port),
        "TIDEGATE_METRICS_HOST": "127.0.0.1",
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "worker.py", "--kubeconfig", str(kubeconfig), "--task-queue", task_queue,
        cwd=Path(__file__).resolve().parent.parent, env=environment,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async def polling() -> str | None:
            try:
                async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientError:
                return None
            return text if f'task_queue="{task_queue}"' in text and "temporal_num_pollers" in text else None

        await eventually(polling, what="the worker's metrics endpoint", timeout=60)
    finally:
        worker.terminate()
        await worker.wait()
