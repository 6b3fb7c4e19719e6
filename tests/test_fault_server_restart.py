"""The Temporal server stopped and restarted (same database file, same port) while a run waits on
a durable timer: the timer fires once, on time, and the run finishes as if nothing had happened.

The production case is a 10-minute pause; here the pause is seconds long, since its length does not
matter to the mechanism (the timer is a row in the server's database, due at an absolute time,
which the restarted server loads and fires). Two outages: one that ends before the timer is due
(it then fires on time) and one that lasts past it (it fires once, right after recovery).

The dev server binary is run here, not through the shared `dev_env` fixture, so that this test alone
can stop it. The worker runs in this process (the fake activities of tests/fakes.py) and is NOT
restarted: it outlives the outage and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from deploy_models import DeploymentResult, DeploymentSpec, Outcome, parse_spec
from tests.conftest import BIN, eventually, start_run, worker_for_test
from tests.fakes import FakeCluster
from tests.history import activity_runs, timer_runs
from workflows.canary import CanaryWorkflow
from workflows.common import SEARCH_ATTRIBUTES

# How late after its due time (or after recovery, if the server came back later) the timer may
# fire: generous, for a loaded machine; the server itself fires within a second or so.
LATE_BOUND = timedelta(seconds=15)
START_TIMEOUT = 60.0  # seconds for the dev server to start answering


class DevServer:
    """`temporal server start-dev` on a fixed port with a database file, so it can be restarted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        attributes = [arg for key in SEARCH_ATTRIBUTES for arg in ("--search-attribute", f"{key.name}=Keyword")]
        with open(self.workdir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "temporal"), "server", "start-dev", "--headless", "--log-level", "warn",
                    "--db-filename", str(self.workdir / "temporal.db"),
                    "--ip", "127.0.0.1", "--port", str(self.port), *attributes,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def stop(self) -> None:
        """SIGTERM, then wait until the process has exited."""
        process = self.process
        assert process is not None
        process.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return process.poll() is not None

        await eventually(exited, what="the Temporal server to exit", timeout=60)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


async def answers(client: Client) -> bool:
    """Whether the server behind `client` serves its namespace (again): it has loaded its state."""
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=client.namespace))
    except RPCError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DevServer]:
    dev_server = DevServer(tmp_path)
    dev_server.start()
    try:
        yield dev_server
    finally:
        dev_server.kill()


async def connect(server: DevServer) -> Client:
    async def connected() -> Client | None:
        try:
            return await Client.connect(server.address, data_converter=pydantic_data_converter)
        except (RuntimeError, RPCError):  # not listening yet, or not serving yet
            return None

    client = await eventually(connected, what=f"the Temporal server at {server.address}", timeout=START_TIMEOUT)
    await eventually(lambda: answers(client), what="the Temporal server's namespace", timeout=START_TIMEOUT)
    return client


def paused_canary(pause: timedelta) -> DeploymentSpec:
    return parse_spec(
        {
            "app": "shop",
            "image": "shop:2.0",
            "strategy": {
                "type": "canary",
                "canary": {
                    "steps": [{"setWeight": 50}, {"pause": {"duration": f"{int(pause.total_seconds())}s"}}, {"setWeight": 100}],
                    "smokeTest": {"url": "http://{service}.{namespace}/health"},
                },
            },
        }
    )


@pytest.mark.parametrize(
    ("pause", "outage_past_due"),
    [(timedelta(seconds=20), False), (timedelta(seconds=6), True)],
    ids=["back-before-due", "back-after-due"],
)
async def test_timer_fires_once_on_time_across_a_server_restart(
    server: DevServer, pause: timedelta, outage_past_due: bool
) -> None:
    client = await connect(server)
    env = WorkflowEnvironment.from_client(client)
    cluster = FakeCluster(deployments={"shop-stable": "shop:1.0"}, replicas={"shop-stable": 3})
    task_queue = f"tq-{uuid.uuid4()}"
    async with worker_for_test(env, task_queue, [CanaryWorkflow], cluster.activities()) as worker:
        handle: WorkflowHandle[CanaryWorkflow, DeploymentResult] = await start_run(
            env, task_queue, CanaryWorkflow, paused_canary(pause)
        )

        async def timer_started() -> bool:
            return len(await timer_runs(handle)) == 1

        await eventually(timer_started, what="the pause's timer to start", timeout=60)
        due = (await timer_runs(handle))[0].due
        await server.stop()
        assert [weight for _, weight in cluster.weights] == [50]  # stopped mid-pause
        if outage_past_due:

            async def overdue() -> bool:
                return datetime.now(UTC) > due + timedelta(seconds=2)

            await eventually(overdue, what="the timer's due time to pass", timeout=pause.total_seconds() + 10)
        restarted = datetime.now(UTC)
        server.start()
        await eventually(lambda: answers(client), what="the restarted server", timeout=START_TIMEOUT)
        recovered = datetime.now(UTC)

        result = await asyncio.wait_for(handle.result(), timeout=120)
        assert worker.is_running  # the same worker carried on

    assert result.outcome == Outcome.PROMOTED, result.reason
    assert [weight for _, weight in cluster.weights] == [50, 100, 0]
    assert cluster.deployments == {"shop-stable": "shop:2.0", "shop-canary": "shop:2.0"}
    assert cluster.actions.count("apply shop-stable shop:2.0") == 1

    timers = await timer_runs(handle)
    assert len(timers) == 1, timers
    assert timers[0].due == due and len(timers[0].fired) == 1, timers
    fired = timers[0].fired[0]
    assert fired >= due
    assert fired - max(due, recovered) <= LATE_BOUND
    assert fired > restarted  # the restarted server fired it (it was pending across the outage)

    runs = await activity_runs(handle)
    assert all(run.completed and run.attempt == 1 for run in runs), runs
    summaries = [run.summary for run in runs]
    assert len(summaries) == len(set(summaries)), summaries  # no activity ran twice
