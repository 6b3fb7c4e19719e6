"""One workflow per strategy, plus the building blocks they share (`workflows.common`)."""

from collections.abc import Callable

from temporalio import workflow

# Passed through: the workflow sandbox must see the same model classes as the activities, whose
# results a workflow passes on inside other models.
with workflow.unsafe.imports_passed_through():
    from deploy_models import DeploymentSpec
from workflows import ab_test, blue_green, canary, recreate, rolling
from workflows.ab_test import AbTestWorkflow
from workflows.blue_green import BlueGreenWorkflow
from workflows.canary import CanaryWorkflow
from workflows.recreate import RecreateWorkflow
from workflows.rolling import RollingWorkflow

TASK_QUEUE = "tidegate"

# strategy.type → the workflow that carries it out
WORKFLOWS: dict[str, type] = {
    "blueGreen": BlueGreenWorkflow,
    "canary": CanaryWorkflow,
    "abTest": AbTestWorkflow,
    "rolling": RollingWorkflow,
    "recreate": RecreateWorkflow,
}
# strategy.type → the steps `starter.py plan` prints
PLANS: dict[str, Callable[[DeploymentSpec], list[str]]] = {
    "blueGreen": blue_green.plan,
    "canary": canary.plan,
    "abTest": ab_test.plan,
    "rolling": rolling.plan,
    "recreate": recreate.plan,
}


def workflow_id(namespace: str, app: str) -> str:
    """One run per app and namespace at a time: the id is derived from them."""
    return f"deploy-{namespace}-{app}"
