"""One workflow per strategy, plus the building blocks they share (`workflows.common`)."""

from collections.abc import Callable

from deploy_models import DeploymentSpec
from workflows import blue_green, canary
from workflows.blue_green import BlueGreenWorkflow
from workflows.canary import CanaryWorkflow

TASK_QUEUE = "tidegate"

# strategy.type → the workflow that carries it out
WORKFLOWS: dict[str, type] = {"blueGreen": BlueGreenWorkflow, "canary": CanaryWorkflow}
# strategy.type → the steps `starter.py plan` prints
PLANS: dict[str, Callable[[DeploymentSpec], list[str]]] = {"blueGreen": blue_green.plan, "canary": canary.plan}


def workflow_id(namespace: str, app: str) -> str:
    """One run per app and namespace at a time: the id is derived from them."""
    return f"deploy-{namespace}-{app}"
