"""End to end: the CLI, the real Temporal dev server, the real worker, the emulated cluster.

The CLI runs as a subprocess, exactly as CI would call it; the worker runs in this process with
the real activities, talking to the cluster through the official client over HTTP.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

import starter
from deploy_models import DeploymentResult, DeploymentStatus, Outcome, Phase
from sandbox.cluster import DEPLOYMENTS, SERVICES, ClusterEmulator, serve_cluster, write_kubeconfig
from tests.conftest import eventually
from worker import build_worker, kubernetes_api

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    env: WorkflowEnvironment
    cluster: ClusterEmulator
    cluster_url: str
    task_queue: str
    tmp: Path

    def spec(self, app: str, image: str, **blue_green: Any) -> Path:
        proxy = f"{self.cluster_url}/api/v1/namespaces/{{namespace}}/services/{{service}}:80/proxy/health"
        document = {
            "app": app,
            "image": image,
            "replicas": 2,
            "strategy": {
                "type": "blueGreen",
                "blueGreen": {
                    key: value
                    for key, value in {
                        "previewService": f"{app}-preview",
                        "smokeTest": {"url": proxy, "retries": 1, "interval": "1s"},
                        "scaleDownDelay": "1s",
                        "progressDeadline": "30s",
                        **blue_green,
                    }.items()
                    if value is not None  # None: leave the setting out
                },
            },
        }
        path = self.tmp / f"{app}-{image.replace(':', '-')}.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    async def cli(self, *args: str | Path) -> tuple[int, str, str]:
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.env.client.service_client.config.target_host,
            "TIDEGATE_TASK_QUEUE": self.task_queue,
            "TIDEGATE_USER": "ci-bot",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "starter.py", *map(str, args), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    def selector(self, service: str) -> str | None:
        found = self.cluster.get(SERVICES, "default", service)
        return None if found is None else found["spec"]["selector"].get("version")

    def image(self, deployment: str) -> str | None:
        found = self.cluster.get(DEPLOYMENTS, "default", deployment)
        return None if found is None else found["spec"]["template"]["spec"]["containers"][0]["image"]


async def until_awaiting_approval(stack: Stack, app: str) -> None:
    """Wait until `tidegate status APP` shows the run waiting for approval."""

    async def awaiting_approval() -> bool:
        code, out, _ = await stack.cli("status", app, "--json")
        return code == 0 and DeploymentStatus.model_validate_json(out).phase == Phase.AWAITING_APPROVAL

    await eventually(awaiting_approval, timeout=60, what=f"the run of {app} to wait for approval")


@pytest.fixture
async def stack(dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with serve_cluster(rollout_seconds=0.3) as (cluster, url):
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, url)
        async with await kubernetes_api(str(kubeconfig)) as api:
            async with build_worker(dev_env.client, api, task_queue):
                yield Stack(dev_env, cluster, url, task_queue, tmp_path)


async def test_first_deployment_then_blue_green_switch(stack: Stack) -> None:
    code, out, err = await stack.cli("start", stack.spec("shop", "shop:1.0"), "--wait")
    assert code == 0, out + err
    assert "started deploy-default-shop" in out and "/namespaces/default/workflows/deploy-default-shop" in out
    assert stack.selector("shop") == "blue" and stack.image("shop-blue") == "shop:1.0"

    code, out, err = await stack.cli("start", stack.spec("shop", "shop:2.0"), "--wait")
    assert code == 0, out + err
    assert "promoted: shop serves shop:2.0 from green" in out
    assert "SmokeTesting" in out and "KeepingPrevious" in out  # events printed as they happened
    assert stack.selector("shop") == "green" and stack.selector("shop-preview") == "green"
    assert stack.image("shop-green") == "shop:2.0"
    assert stack.image("shop-blue") is None  # deleted after the scale-down delay

    # What the Temporal UI shows: search attributes and the summary.
    description = await stack.env.client.get_workflow_handle("deploy-default-shop").describe()
    attributes = {key.name: value for key, value in description.typed_search_attributes}
    assert attributes["DeployApp"] == "shop" and attributes["DeployStrategy"] == "blueGreen"
    assert attributes["DeployPhase"] == "Promoted" and attributes["DeployImage"] == "shop:2.0"
    assert await description.static_summary() == "shop blueGreen → shop:2.0"

    code, out, err = await stack.cli("status", "shop", "--json")
    assert code == 0, err
    status = DeploymentStatus.model_validate_json(out)
    assert status.phase == Phase.PROMOTED and status.active_version == "green"
    assert status.events[0].by == "ci-bot"

    code, out, err = await stack.cli("list", "--app", "shop", "--json")
    assert code == 0, err
    assert [(row["image"], row["phase"]) for row in json.loads(out)] == [("shop:2.0", "Promoted"), ("shop:1.0", "Promoted")]

    code, out, err = await stack.cli("undo", "shop", "--wait")  # back to the image promoted before
    assert code == 0, out + err
    assert "started deploy-default-shop (shop:1.0)" in out
    assert stack.selector("shop") == "blue" and stack.image("shop-blue") == "shop:1.0"


async def test_without_a_preview_service_the_smoke_test_reaches_the_new_colour(stack: Stack) -> None:
    """The smoke test's `{service}` is then `{app}-{colour}`: tidegate gives the new colour that
    Service (its pods, by `version`), so the test reaches the new pods and nothing else."""
    assert (await stack.cli("start", stack.spec("till", "till:1.0", previewService=None), "--wait"))[0] == 0
    code, out, err = await stack.cli("start", stack.spec("till", "till:2.0", previewService=None), "--wait")
    assert code == 0, out + err
    assert stack.selector("till") == "green" and stack.selector("till-green") == "green"
    assert "GET " in out and "/services/till-green:80/proxy/health answered 200" in out

    code, out, err = await stack.cli("start", stack.spec("till", "till:3.0-unhealthy", previewService=None), "--wait")
    assert code == 3, out + err
    assert "/services/till-blue:80/proxy/health answered 500" in out
    assert stack.selector("till") == "green" and stack.image("till-blue") is None


async def test_unhealthy_version_is_rolled_back_and_traffic_stays(stack: Stack) -> None:
    code, out, err = await stack.cli("start", stack.spec("cart", "cart:1.0"), "--wait")
    assert code == 0, out + err
    code, out, err = await stack.cli("start", stack.spec("cart", "cart:2.0-unhealthy"), "--wait", "--json")
    assert code == 3, out + err
    assert '"outcome":"rolledBack"' in out and "smoke test" in out
    assert stack.selector("cart") == "blue" and stack.image("cart-blue") == "cart:1.0"
    assert stack.image("cart-green") is None

    code, out, err = await stack.cli("retry", "cart", "--wait")  # the same spec, run again
    assert code == 3, out + err
    assert "started deploy-default-cart (cart:2.0-unhealthy)" in out
    code, _, err = await stack.cli("retry", "cart-nonexistent")
    assert code == 2


async def test_approval_second_start_refused_and_abort(stack: Stack) -> None:
    assert (await stack.cli("start", stack.spec("pay", "pay:1.0"), "--wait"))[0] == 0
    waiting = asyncio.ensure_future(stack.cli("start", stack.spec("pay", "pay:2.0", approval={}), "--wait"))

    await until_awaiting_approval(stack, "pay")
    assert stack.selector("pay") == "blue" and stack.selector("pay-preview") == "green"

    code, _, err = await stack.cli("start", stack.spec("pay", "pay:3.0"))
    assert code == 1
    assert "already running: deploy-default-pay (pay:2.0, phase AwaitingApproval" in err

    code, out, err = await stack.cli("abort", "pay", "--by", "sre-oncall", "--reason", "freeze")
    assert code == 0, err
    code, out, err = await waiting
    assert code == 3, out + err
    assert "aborted: abort by sre-oncall: freeze" in out
    assert stack.selector("pay") == "blue" and stack.image("pay-green") is None

    code, _, err = await stack.cli("approve", "pay", "--by", "late")
    assert code == 2 and "is not running" in err
    code, _, err = await stack.cli("abort", "nosuchapp")
    assert code == 2 and "no deployment 'nosuchapp'" in err


async def test_a_run_cancelled_from_temporal_puts_traffic_back_and_exits_3(stack: Stack) -> None:
    """Cancelling from the Temporal UI (or `temporal workflow cancel`) is an abort: compensation
    runs, and `start --wait` reports the recorded result with an abort's exit code."""
    assert (await stack.cli("start", stack.spec("bank", "bank:1.0"), "--wait"))[0] == 0
    waiting = asyncio.ensure_future(stack.cli("start", stack.spec("bank", "bank:2.0", approval={}), "--wait"))

    await until_awaiting_approval(stack, "bank")
    await stack.env.client.get_workflow_handle("deploy-default-bank").cancel()
    code, out, err = await waiting
    assert code == 3, out + err
    assert "aborted: the workflow was cancelled" in out
    assert stack.selector("bank") == "blue" and stack.image("bank-green") is None


async def test_two_starts_at_once_one_runs_the_other_is_refused(stack: Stack) -> None:
    first, second = await asyncio.gather(
        stack.cli("start", stack.spec("vault", "vault:1.0", approval={})),
        stack.cli("start", stack.spec("vault", "vault:1.1", approval={})),
    )
    codes = sorted([first[0], second[0]])
    assert codes == [0, 1], (first, second)
    refused = first if first[0] == 1 else second
    assert "already running: deploy-default-vault (vault:1." in refused[2]
    await stack.cli("abort", "vault", "--by", "test")


class Terminal(io.StringIO):
    """What `start --wait` writes to on a terminal: the live line is redrawn in place."""

    def isatty(self) -> bool:
        return True


async def test_watch_list_running_and_the_live_line_on_a_terminal(stack: Stack) -> None:
    assert (await stack.cli("start", stack.spec("kiosk", "kiosk:1.0"), "--wait"))[0] == 0
    assert (await stack.cli("start", stack.spec("kiosk", "kiosk:2.0", approval={})))[0] == 0
    handle = stack.env.client.get_workflow_handle("deploy-default-kiosk", result_type=DeploymentResult)

    await until_awaiting_approval(stack, "kiosk")
    code, out, err = await stack.cli("list", "--running")
    assert code == 0, err
    running = [line for line in out.splitlines() if "deploy-default-kiosk" in line]
    assert len(running) == 1 and "AwaitingApproval" in running[0] and "kiosk:2.0" in running[0]

    terminal = Terminal()
    followed = asyncio.ensure_future(starter.follow(handle, terminal))
    watched = asyncio.ensure_future(stack.cli("watch", "kiosk"))
    await eventually(lambda: "AwaitingApproval | elapsed " in terminal.getvalue(), what="the live line")
    assert (await stack.cli("approve", "kiosk", "--by", "lead"))[0] == 0
    result = await followed
    code, out, err = await watched

    assert result.outcome == Outcome.PROMOTED and code == 0, out + err
    assert "promoted: kiosk serves kiosk:2.0 from green" in out and "approved" in out
    shown = terminal.getvalue()
    assert "\r\x1b[K" in shown and "Promoted: kiosk serves kiosk:2.0 from green" in shown
