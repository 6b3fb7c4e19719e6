"""Payload encryption on the real dev server: what the shared Temporal stores, who can read it.

One blue/green run goes through a worker and a client made by `connect_temporal` with
TIDEGATE_PAYLOAD_KEY set; its history is then read with a client WITHOUT the key (what anyone with
access to the server sees), with the key, through the codec server (`python -m payload_codec
serve`, as its own process), with `temporal workflow show --codec-endpoint`, and in headless
Chromium through the dev server's UI pointed at that codec server (what a person sees). The dev
server is this module's own: the UI's codec endpoint is fixed when the server starts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.api.workflowservice.v1 import QueryWorkflowRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deploy_models import Decision, DeploymentInput, DeploymentResult, Outcome, Phase, parse_spec
from payload_codec import (
    ENCODING,
    KEY_ID_METADATA,
    KEY_ID_VARIABLE,
    KEY_VARIABLE,
    OLD_KEYS_VARIABLE,
    EncryptionCodec,
    PayloadKeyError,
    codec_app,
    codec_from_environment,
    new_key,
    parse_key,
    with_codec,
)
from sandbox.prometheus import free_port
from starter import start_deployment
from tests.browser import Browser
from tests.conftest import BIN, dev_server_with_ui, eventually, until_phase
from tests.fakes import FakeCluster
from tests.system_tools import ensure_debian_tool
from tests.test_packaging import compose  # noqa: F401  (a fixture: the resolved docker-compose.yml)
from worker import connect_temporal
from workflows.blue_green import BlueGreenWorkflow

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "2026-q1"
APP = "ledgerd"
IMAGE = "registry.example.com/payments/ledgerd:7.3.1-rc2"
APPROVAL_REASON = "reconciliation totals match"
TRANSIENT_ERROR = "503 Service Unavailable"  # what FakeCluster's failing switch raises
PATCH_MARKER = "core_patch"  # the marker name of the SDK's workflow.patched
SECRETS = (APP, IMAGE, APPROVAL_REASON, TRANSIENT_ERROR, "alice")


@dataclass
class EncryptedStack:
    env: WorkflowEnvironment  # its client has no key: what anyone with access to the server reads
    client: Client  # made by connect_temporal with the key in the environment
    key: str
    ui: str
    codec: str


@dataclass
class EncryptedRun:
    handle: WorkflowHandle[Any, DeploymentResult]  # through the client with the key
    result: DeploymentResult
    history: History  # as stored, fetched without the key


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[EncryptedStack]:
    """A dev server whose UI decodes through a codec server (its own process) holding the key."""
    key, ui_port, codec_port = new_key(), free_port(), free_port()
    ui, codec = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{codec_port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "payload_codec", "serve", "--port", str(codec_port), "--cors-origin", ui],
        cwd=ROOT, env={**os.environ, KEY_VARIABLE: key, KEY_ID_VARIABLE: KEY_ID},
    )
    try:
        env = await dev_server_with_ui(ui_port, "--ui-codec-endpoint", codec)
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TEMPORAL_ADDRESS", env.client.service_client.config.target_host)
                patch.setenv("TEMPORAL_NAMESPACE", env.client.namespace)
                patch.setenv(KEY_VARIABLE, key)
                patch.setenv(KEY_ID_VARIABLE, KEY_ID)
                patch.delenv(OLD_KEYS_VARIABLE, raising=False)
                client = await connect_temporal()
            await eventually(lambda: codec_status(codec), what="the codec server", timeout=60)
            yield EncryptedStack(env, client, key, ui, codec)
        finally:
            await env.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=30)


async def codec_status(codec: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as session, session.post(f"{codec}/encode", json={}) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return None


@pytest.fixture(scope="module")
async def run(stack: EncryptedStack) -> AsyncIterator[EncryptedRun]:
    """A blue/green deployment as the CLI starts it (search attributes, summary), approved by a
    signal, with one transient failure (a retried switch), all through the encrypting client."""
    cluster = FakeCluster(services={APP: "blue"}, deployments={f"{APP}-blue": f"{APP}:7.3.0"}, switch_failures=1)
    spec = parse_spec({
        "app": APP,
        "image": IMAGE,
        "strategy": {"type": "blueGreen", "blueGreen": {"approval": {}, "scaleDownDelay": "1s"}},
    })
    task_queue = f"tq-{uuid.uuid4()}"
    async with Worker(
        stack.client,
        task_queue=task_queue,
        workflows=[BlueGreenWorkflow],
        activities=cluster.activities(),
        workflow_failure_exception_types=[Exception],
    ):
        handle = await start_deployment(stack.client, spec, requested_by="ci", task_queue=task_queue)
        await until_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.signal(BlueGreenWorkflow.approve, Decision(by="alice", reason=APPROVAL_REASON))
        result = await handle.result()
        stored = await stack.env.client.get_workflow_handle(handle.id).fetch_history()
        history = History(events=stored.events)
        yield EncryptedRun(handle, result, history)  # the worker stays up: queries replay the run


def children(message: Message) -> Iterator[tuple[str, Message]]:
    """(field name, message) for every message directly inside `message`: map values, list items."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [item for item in value.values() if isinstance(item, Message)]
        else:
            items = list(value) if field.is_repeated else [value]
        for item in items:
            yield field.name, item


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload inside `message`, with its field path (`events.activity_task_..._attributes.input`)."""
    if isinstance(message, Payload):
        yield path, message
        return
    for name, item in children(message):
        yield from payloads_in(item, f"{path}.{name}" if path else name)


def failures_in(message: Message) -> Iterator[Failure]:
    for _, item in children(message):
        if isinstance(item, Failure):
            yield item
        yield from failures_in(item)


def without_names(history: History) -> History:
    """A copy of `history` without what no codec touches: search attributes and workflow ids."""
    stripped = History()
    stripped.CopyFrom(history)

    def clear(message: Message) -> None:
        for name in ("search_attributes", "workflow_id"):
            if message.DESCRIPTOR.fields_by_name.get(name) is not None:
                message.ClearField(name)
        for _, item in children(message):
            clear(item)

    clear(stripped)
    return stripped


def encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING and payload.metadata.get(KEY_ID_METADATA) == KEY_ID.encode()


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.text()


def as_json(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


def from_json(text: str) -> list[Payload]:
    return list(json_format.Parse(text, Payloads()).payloads)


# (event type, path in the event) of the spec and of the DeploymentResult, as stored
STORED_SPEC = (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, "workflow_execution_started_event_attributes.input.payloads")
STORED_RESULT = (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, "workflow_execution_completed_event_attributes.result.payloads")


def first_payload(run: EncryptedRun, event_type: EventType.ValueType, field: str) -> Payload:
    """The first payload at `field` (a path within the event) of an event of `event_type`, as stored."""
    return next(
        payload
        for event in run.history.events if event.event_type == event_type
        for path, payload in payloads_in(event) if path == field
    )


# -- what the shared server stores ------------------------------------------------------------------


async def test_every_stored_payload_is_encrypted(run: EncryptedRun) -> None:
    assert run.result.outcome == Outcome.PROMOTED
    found: list[tuple[str, str, Payload]] = []  # (event type, path in the event, payload)
    patches: list[Any] = []
    for event in run.history.events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        for path, payload in payloads_in(event):
            if event.marker_recorded_event_attributes.marker_name == PATCH_MARKER:
                patches.append(json.loads(payload.data))
            elif "search_attributes" not in path:
                found.append((kind, path, payload))
    assert [(kind, path) for kind, path, payload in found if not encrypted(payload)] == []
    # The SDK's own version markers (workflow.patched) bypass the codec: they hold a change's name.
    assert patches and all(set(patch) == {"id", "deprecated"} for patch in patches)
    present = {(kind, path) for kind, path, _ in found}
    for expected in (
        ("WORKFLOW_EXECUTION_STARTED", "workflow_execution_started_event_attributes.input.payloads"),  # the spec
        ("WORKFLOW_EXECUTION_STARTED", "user_metadata.summary"),  # the UI's summary
        ("WORKFLOW_EXECUTION_SIGNALED", "workflow_execution_signaled_event_attributes.input.payloads"),  # approval
        ("ACTIVITY_TASK_SCHEDULED", "activity_task_scheduled_event_attributes.input.payloads"),
        ("ACTIVITY_TASK_SCHEDULED", "user_metadata.summary"),
        ("ACTIVITY_TASK_COMPLETED", "activity_task_completed_event_attributes.result.payloads"),
        ("TIMER_STARTED", "user_metadata.summary"),
        ("ACTIVITY_TASK_STARTED", "activity_task_started_event_attributes.last_failure.encoded_attributes"),
        ("WORKFLOW_EXECUTION_COMPLETED", "workflow_execution_completed_event_attributes.result.payloads"),
    ):
        assert expected in present, f"no {expected} among {sorted(present)}"
    # The retried switch's failure: message and stack trace moved into the encrypted attributes.
    failures = list(failures_in(run.history))
    assert failures and all(f.message == "Encoded failure" and not f.stack_trace for f in failures)
    assert all(encrypted(f.encoded_attributes) for f in failures)


async def test_nothing_secret_is_readable_but_search_attributes_and_the_id(run: EncryptedRun) -> None:
    stored = without_names(run.history)
    raw = stored.SerializeToString()
    text = json_format.MessageToJson(stored)
    for secret in SECRETS:
        at = text.find(secret)
        assert secret.encode() not in raw and at < 0, f"{secret!r} is readable in the stored history: {text[at - 300:at + 100]}"
    assert IMAGE.encode() in run.history.SerializeToString()  # in the search attributes, as documented


async def test_search_attributes_stay_readable(stack: EncryptedStack, run: EncryptedRun) -> None:
    """Temporal indexes search attributes, so no codec touches them: the app, namespace,
    strategy, phase and image of every run are visible to anyone who can list workflows."""
    described = await stack.env.client.get_workflow_handle(run.handle.id).describe()
    assert {key.name: value for key, value in described.typed_search_attributes if key.name.startswith("Deploy")} == {
        "DeployApp": APP, "DeployNamespace": "default", "DeployStrategy": "blueGreen",
        "DeployPhase": "Promoted", "DeployImage": IMAGE,
    }
    assert run.handle.id == f"deploy-default-{APP}"  # and the workflow id names the app


async def test_without_the_key_nothing_decodes(stack: EncryptedStack, run: EncryptedRun) -> None:
    keyless = stack.env.client.get_workflow_handle(run.handle.id)
    with pytest.raises(Exception, match="binary/encrypted"):
        await keyless.result()
    with pytest.raises(Exception, match="binary/encrypted"):
        await (await keyless.describe()).static_summary()
    # Query results (the status, the UI's current details) are encrypted by the worker as well.
    answer = await stack.env.client.workflow_service.query_workflow(
        QueryWorkflowRequest(
            namespace=stack.env.client.namespace,
            execution=WorkflowExecution(workflow_id=run.handle.id),
            query=WorkflowQuery(query_type="__temporal_workflow_metadata"),
        )
    )
    assert answer.query_result.payloads and all(encrypted(payload) for payload in answer.query_result.payloads)


# -- with the key ----------------------------------------------------------------------------------


async def test_the_key_holder_reads_the_run(stack: EncryptedStack, run: EncryptedRun) -> None:
    result = await stack.client.get_workflow_handle(run.handle.id, result_type=DeploymentResult).result()
    assert result == run.result
    assert result.outcome == Outcome.PROMOTED and result.active_version == "green" and result.image == IMAGE
    approved = next(event for event in result.events if event.kind == "approved")
    assert approved.by == "alice" and approved.reason == APPROVAL_REASON
    assert await (await run.handle.describe()).static_summary() == f"{APP} blueGreen → {IMAGE}"
    details = (await run.handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)).current_details
    assert f"approved by alice: {APPROVAL_REASON}" in details
    stored = [
        event.user_metadata.summary
        for event in run.history.events if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    summaries = await stack.client.data_converter.decode(stored, [str] * len(stored))
    assert f"apply {APP}-green ({IMAGE})" in summaries


async def test_codec_server_decodes_the_stored_payloads(stack: EncryptedStack, run: EncryptedRun) -> None:
    stored = [
        first_payload(run, *STORED_SPEC),
        first_payload(run, *STORED_RESULT),
    ]
    status, headers, body = await post(
        f"{stack.codec}/decode", as_json(stored),
        {"Content-Type": "application/json", "Origin": stack.ui, "X-Namespace": "default"},
    )
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == stack.ui
    spec_payload, result_payload = from_json(body)
    converter = pydantic_data_converter.payload_converter
    assert converter.from_payload(spec_payload, DeploymentInput).spec.image == IMAGE
    assert result_payload == converter.to_payload(run.result)  # the very payload a keyless worker would store


async def test_codec_server_encode_then_decode_round_trips(stack: EncryptedStack) -> None:
    plain = [
        *pydantic_data_converter.payload_converter.to_payloads([{"image": IMAGE}, None, b"\x00\xff raw"]),
        Payload(metadata={"encoding": b"json/plain", "messageType": b"x"}, data=b'"text"'),
    ]
    status, _, first = await post(f"{stack.codec}/encode", as_json(plain), {"Content-Type": "application/json"})
    assert status == 200, first
    _, _, second = await post(f"{stack.codec}/encode", as_json(plain), {"Content-Type": "application/json"})
    sealed = from_json(first)
    assert all(encrypted(payload) for payload in sealed) and IMAGE not in first
    assert [p.data for p in sealed] != [p.data for p in from_json(second)]  # a fresh nonce every time
    status, _, body = await post(f"{stack.codec}/decode", first, {"Content-Type": "application/json"})
    assert status == 200, body
    assert from_json(body) == plain
    status, _, body = await post(f"{stack.codec}/decode", as_json(plain))  # plain payloads pass through
    assert status == 200 and from_json(body) == plain


async def test_codec_server_answers_the_ui_preflight_only_for_its_origin(stack: EncryptedStack) -> None:
    async with aiohttp.ClientSession() as session:
        preflight = {"Origin": stack.ui, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type,x-namespace"}
        async with session.options(f"{stack.codec}/decode", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == stack.ui
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"content-type", "x-namespace"} <= allowed
        async with session.options(f"{stack.codec}/decode", headers={**preflight, "Origin": "http://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
    status, _, body = await post(f"{stack.codec}/decode", "not json", {"Content-Type": "application/json"})
    assert status == 400 and "payloads" in body


async def test_the_ui_shows_the_run_decoded_through_the_codec_server(
    stack: EncryptedStack, run: EncryptedRun, tmp_path: Path
) -> None:
    chromium = ensure_debian_tool("chromium", "chromium")
    run_id = (await run.handle.describe()).run_id
    page = f"{stack.ui}/namespaces/default/workflows/{run.handle.id}/{run_id}"
    async with Browser(chromium, tmp_path / "profile") as browser:
        text = await browser.open(
            f"{page}/user-metadata", [f"{APP} blueGreen → {IMAGE}", f"approved by alice: {APPROVAL_REASON}"]
        )
        assert "binary/encrypted" not in text
        await browser.open(f"{page}/history", [f"apply {APP}-green ({IMAGE})"])


async def test_the_temporal_cli_decodes_through_the_codec_server(stack: EncryptedStack, run: EncryptedRun) -> None:
    async def shown_payloads(*options: str) -> list[tuple[str, str]]:
        """(encoding, data) of every payload `temporal workflow show --output json` prints."""
        process = await asyncio.create_subprocess_exec(
            str(BIN / "temporal"), "workflow", "show", "--workflow-id", run.handle.id, "--output", "json",
            "--address", stack.env.client.service_client.config.target_host, *options,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={name: value for name, value in os.environ.items() if name != "TEMPORAL_CODEC_ENDPOINT"},
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, err.decode()

        def walk(node: Any) -> Iterator[tuple[str, str]]:
            if isinstance(node, dict):
                if "metadata" in node and "data" in node:
                    encoding = base64.b64decode(node["metadata"].get("encoding", "")).decode()
                    yield encoding, base64.b64decode(node["data"]).decode(errors="replace")
                for value in node.values():
                    yield from walk(value)
            elif isinstance(node, list):
                for value in node:
                    yield from walk(value)

        return list(walk(json.loads(out)))

    stored = await shown_payloads()
    assert {encoding for encoding, _ in stored} == {ENCODING.decode(), "json/plain"}  # plain: search attributes, the patch marker
    assert not any(APPROVAL_REASON in data for _, data in stored)
    decoded = await shown_payloads("--codec-endpoint", stack.codec)
    assert ENCODING.decode() not in {encoding for encoding, _ in decoded}
    assert any(APPROVAL_REASON in data for _, data in decoded)


# -- wrong keys, rotation, configuration -------------------------------------------------------------


async def test_a_wrong_key_fails_naming_the_key_id(stack: EncryptedStack, run: EncryptedRun) -> None:
    wrong = EncryptionCodec(parse_key(new_key(), "test"), KEY_ID)
    stranger = await Client.connect(
        stack.env.client.service_client.config.target_host,
        namespace=stack.env.client.namespace,
        data_converter=with_codec(pydantic_data_converter, wrong),
    )
    with pytest.raises(PayloadKeyError, match=f"key id '{KEY_ID}'.*wrong one"):
        await stranger.get_workflow_handle(run.handle.id, result_type=DeploymentResult).result()

    stored = first_payload(run, *STORED_RESULT)
    with pytest.raises(PayloadKeyError, match=f"key id '{KEY_ID}', which is not configured here"):
        await EncryptionCodec(parse_key(new_key(), "test"), "2026-q2").decode([stored])

    runner = web.AppRunner(codec_app(wrong))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        status, _, body = await post(f"http://127.0.0.1:{port}/decode", as_json([stored]))
    finally:
        await runner.cleanup()
    assert status == 422 and KEY_ID in body and "wrong one" in body


async def test_old_keys_still_decrypt_after_a_rotation(stack: EncryptedStack, run: EncryptedRun) -> None:
    stored = first_payload(run, *STORED_RESULT)
    rotated = codec_from_environment({
        KEY_VARIABLE: new_key(), KEY_ID_VARIABLE: "2026-q2", OLD_KEYS_VARIABLE: f"2025-q4:{new_key()}, {KEY_ID}:{stack.key}",
    })
    assert rotated is not None
    (plain,) = await rotated.decode([stored])
    assert pydantic_data_converter.payload_converter.from_payload(plain, DeploymentResult) == run.result
    (resealed,) = await rotated.encode([plain])
    assert resealed.metadata[KEY_ID_METADATA] == b"2026-q2"
    assert await rotated.decode([resealed]) == [plain]


@pytest.mark.parametrize(
    "environment, variable",
    [
        ({KEY_VARIABLE: "not base64!"}, KEY_VARIABLE),
        ({KEY_VARIABLE: base64.b64encode(b"sixteen byte key").decode()}, KEY_VARIABLE),
        ({KEY_VARIABLE: new_key(), OLD_KEYS_VARIABLE: "no-colon"}, OLD_KEYS_VARIABLE),
        ({KEY_VARIABLE: new_key(), OLD_KEYS_VARIABLE: "old:c2hvcnQ="}, f"{OLD_KEYS_VARIABLE} (key id 'old')"),
    ],
)
def test_a_bad_key_in_the_environment_names_the_variable(environment: dict[str, str], variable: str) -> None:
    with pytest.raises(PayloadKeyError) as error:
        codec_from_environment(environment)
    assert str(error.value).startswith(variable)
    assert not any(value in str(error.value) for value in environment.values() if len(value) > 10)  # no key echoed


def test_no_key_no_encryption() -> None:
    assert codec_from_environment({}) is None and codec_from_environment({KEY_VARIABLE: "  "}) is None
    assert with_codec(pydantic_data_converter, None) is pydantic_data_converter


def test_commands_report_a_bad_or_missing_key() -> None:
    environment = {**os.environ, KEY_VARIABLE: "c2hvcnQ="}
    cli = subprocess.run([sys.executable, "starter.py", "status", APP], cwd=ROOT, env=environment,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and f"{KEY_VARIABLE} must be the base64 of 32 bytes" in cli.stderr, cli.stderr
    keyless = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
    serve = subprocess.run([sys.executable, "-m", "payload_codec", "serve"], cwd=ROOT, env=keyless,
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and f"{KEY_VARIABLE} is not set" in serve.stderr
    keys = [
        subprocess.run([sys.executable, "-m", "payload_codec", "key"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True).stdout.strip()
        for _ in range(2)
    ]
    assert keys[0] != keys[1] and all(len(parse_key(key, "key")) == 32 for key in keys)


def published(port: Any) -> tuple[str, int, int]:
    """(host address, host port, container port) of a compose port, in either of its forms."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), int(port["published"]), int(port["target"])
    *address, host, container = str(port).split("/")[0].split(":")
    return "".join(address), int(host), int(container)


def test_compose_passes_the_key_and_serves_the_codec_to_the_ui(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "codec-server"):
        assert services[name]["environment"][KEY_VARIABLE] == "", f"{name}: encryption is off unless a key is given"
    codec = services["codec-server"]
    command = codec["entrypoint"]
    assert command[:4] == ["python", "-m", "payload_codec", "serve"]
    (address, host_port, container_port), = map(published, codec["ports"])
    assert address == "127.0.0.1" and container_port == int(command[command.index("--port") + 1])
    (_, ui_port, _), = map(published, services["temporal-ui"]["ports"])
    assert codec["environment"]["TIDEGATE_CODEC_CORS_ORIGINS"] == f"http://localhost:{ui_port}"
    assert "TEMPORAL_CODEC_ENDPOINT" in services["temporal-ui"]["environment"]
    assert host_port == 8081  # the endpoint docs/operations.md gives the UI
