"""Replay tests: the checked-in histories of real runs replay with the current workflow code.

A running deployment is replayed by whichever worker picks it up next, so a workflow change that
makes any recorded history replay differently would break deployments running while workers
are upgraded. Such a change must take the old path for old histories: `workflow.patched`.
The histories are recorded by `tests/record_histories.py` (see tests/histories/README.md).
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from deploy_models import DeploymentInput, DeploymentResult
from workflows import WORKFLOWS
from workflows.canary import CanaryWorkflow

HISTORIES = Path(__file__).resolve().parent / "histories"
HISTORY_FILES = sorted(HISTORIES.glob("*.json"))
CANARY_HISTORY = HISTORIES / "canary-promoted.json"


@cache
def load(path: Path) -> WorkflowHistory:
    """A history file as recorded, under the workflow id the run had."""
    text = path.read_text(encoding="utf-8")
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started["workflowId"], text)


def strategy_of(path: Path) -> str:
    """`canary-promoted.json` → `canary`: a history's file name starts with its strategy."""
    return path.stem.split("-", 1)[0]


def replayer(*workflows: type) -> Replayer:
    """A replayer with the worker's data converter."""
    return Replayer(workflows=list(workflows), data_converter=pydantic_data_converter)


@pytest.mark.parametrize("path", HISTORY_FILES, ids=[path.stem for path in HISTORY_FILES])
async def test_recorded_history_replays_with_the_current_code(path: Path) -> None:
    """With only the workflow of the strategy the file is named after: a misfiled history fails too."""
    strategy = strategy_of(path)
    assert strategy in WORKFLOWS, f"{path.name}: no strategy {strategy!r} (the file name starts with the strategy)"
    result = await replayer(WORKFLOWS[strategy]).replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"


def test_every_strategy_has_recorded_histories() -> None:
    recorded = {strategy_of(path) for path in HISTORY_FILES}
    assert set(WORKFLOWS) <= recorded, f"no history of {sorted(set(WORKFLOWS) - recorded)}: record one"


# -- the guard itself: a change that replays differently fails, the same change patched does not --
# (Outside the sandbox, which would re-import this test module; the check that fails is the
# comparison of commands with the history, the same either way.)


@workflow.defn(name="CanaryDeployment", sandboxed=False)
class CanaryWaitingFirst(CanaryWorkflow):
    """A careless change: a timer before the first activity, for every run, old or new."""

    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(deployment)


@workflow.defn(name="CanaryDeployment", sandboxed=False)
class CanaryWaitingFirstPatched(CanaryWorkflow):
    """The same change behind `workflow.patched`: runs that started without it replay as before."""

    @workflow.run
    async def run(self, deployment: DeploymentInput) -> DeploymentResult:
        if workflow.patched("wait-before-reading-stable"):
            await workflow.sleep(timedelta(seconds=1))
        return await super().run(deployment)


async def test_a_change_that_replays_differently_fails_the_replay() -> None:
    result = await replayer(CanaryWaitingFirst).replay_workflow(load(CANARY_HISTORY), raise_on_replay_failure=False)

    assert isinstance(result.replay_failure, workflow.NondeterminismError), result.replay_failure
    assert "Timer" in str(result.replay_failure)  # the new timer met the recorded first activity
    with pytest.raises(workflow.NondeterminismError):
        await replayer(CanaryWaitingFirst).replay_workflow(load(CANARY_HISTORY))


async def test_the_same_change_behind_patched_replays() -> None:
    result = await replayer(CanaryWaitingFirstPatched).replay_workflow(load(CANARY_HISTORY), raise_on_replay_failure=False)

    assert result.replay_failure is None, result.replay_failure
