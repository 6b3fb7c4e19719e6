"""tidegate's command line: plan, start, approve, abort, rollback and inspect deployments.

    python starter.py plan SPEC
    python starter.py start SPEC [--wait] [--json]
    python starter.py approve|abort|rollback ID [--by NAME] [--reason TEXT]
    python starter.py status ID [--json]

ID is a workflow id or an app name (with --namespace). Exit codes, stable for CI:
0 promoted (or the command succeeded), 3 rolled back or aborted, 2 invalid input (nothing was
started or signalled), 1 any other error. Temporal is reached through the standard environment
(TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS settings, config profiles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from deploy_models import (
    Decision,
    DeploymentInput,
    DeploymentResult,
    DeploymentSpec,
    DeploymentStatus,
    Event,
    Outcome,
    SpecError,
    load_spec_file,
    parse_spec,
)
from workflows import PLANS, TASK_QUEUE, WORKFLOWS, workflow_id
from workflows.common import DEPLOY_APP, DEPLOY_IMAGE, DEPLOY_NAMESPACE, DEPLOY_PHASE, DEPLOY_STRATEGY

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_ROLLED_BACK = 3

OUTCOME_EXIT = {
    Outcome.PROMOTED: EXIT_OK,
    Outcome.ROLLED_BACK: EXIT_ROLLED_BACK,
    Outcome.ABORTED: EXIT_ROLLED_BACK,
    Outcome.FAILED: EXIT_ERROR,
}


class InvalidInput(Exception):
    """Bad input from the user: exit code 2, nothing started or signalled."""


def default_user() -> str:
    """Who is acting: an explicit setting, else the CI's actor, else the login name."""
    for variable in ("TIDEGATE_USER", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    return "unknown"


async def connect() -> Client:
    from worker import connect_temporal

    return await connect_temporal()


def ui_link(client: Client, workflow: str) -> str:
    """The Temporal UI page of a run (TEMPORAL_UI_URL, else the dev server's UI port)."""
    base = os.environ.get("TEMPORAL_UI_URL")
    if not base:
        host = client.service_client.config.target_host.rsplit(":", 1)[0]
        base = f"http://{host}:8233"
    return f"{base.rstrip('/')}/namespaces/{client.namespace}/workflows/{workflow}"


def load_spec(path: str, image: str | None = None) -> DeploymentSpec:
    try:
        spec = load_spec_file(path)
        if image is not None:
            spec = parse_spec({**spec.model_dump(mode="json", exclude_none=True), "image": image})
        return spec
    except SpecError as error:
        raise InvalidInput(f"invalid spec {path}:\n" + "\n".join(f"  {p}" for p in error.problems)) from None


async def registered_search_attributes(client: Client) -> set[str]:
    """The tidegate search attributes this Temporal namespace knows (none: start without them)."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    try:
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError:
        return set()
    return set(response.custom_attributes)


async def start_deployment(
    client: Client,
    spec: DeploymentSpec,
    requested_by: str,
    task_queue: str = TASK_QUEUE,
    ui_metadata: bool = True,
) -> WorkflowHandle[Any, DeploymentResult]:
    """Start the run, refusing a second one for the same app and namespace."""
    known = await registered_search_attributes(client) if ui_metadata else set()
    pairs = [
        SearchAttributePair(key, value)
        for key, value in (
            (DEPLOY_APP, spec.app),
            (DEPLOY_NAMESPACE, spec.namespace),
            (DEPLOY_STRATEGY, spec.strategy.type),
            (DEPLOY_PHASE, "Pending"),
            (DEPLOY_IMAGE, spec.image),
        )
        if key.name in known
    ]
    run_id = workflow_id(spec.namespace, spec.app)
    try:
        return await client.start_workflow(
            WORKFLOWS[spec.strategy.type].run,
            DeploymentInput(spec=spec, requested_by=requested_by),
            id=run_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(pairs) if pairs else None,
            static_summary=f"{spec.app} {spec.strategy.type} → {spec.image}" if ui_metadata else None,
        )
    except WorkflowAlreadyStartedError:
        running = await describe_running(client, run_id)
        raise AlreadyRunning(
            f"a deployment of {spec.app} in namespace {spec.namespace} is already running: "
            f"{run_id}{running}; approve, abort or wait for it before starting another"
        ) from None


class AlreadyRunning(Exception):
    """A second start for an app that is being deployed."""


async def describe_running(client: Client, run_id: str) -> str:
    try:
        status = await client.get_workflow_handle(run_id).query("status", result_type=DeploymentStatus)
        return f" ({status.image}, phase {status.phase.value}, started {status.started_at:%Y-%m-%d %H:%M:%S} UTC)"
    except RPCError:
        return ""


async def resolve(client: Client, name: str, namespace: str) -> WorkflowHandle[Any, Any]:
    """A handle for a workflow id, or for the deployment of app `name` in `namespace`."""
    for candidate in (name, workflow_id(namespace, name)):
        handle = client.get_workflow_handle(candidate)
        try:
            await handle.describe()
            return handle
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
    raise InvalidInput(f"no deployment {name!r}: not a workflow id, nor an app in namespace {namespace!r}")


def format_event(event: Event) -> str:
    who = f" [by {event.by}" + (f": {event.reason}" if event.reason else "") + "]" if event.by else ""
    return f"{event.at:%Y-%m-%dT%H:%M:%SZ}  {event.kind:<13} {event.message}{who}"


async def follow(handle: WorkflowHandle[Any, DeploymentResult], out: TextIO) -> DeploymentResult:
    """Print each event as it is recorded, then return the result."""
    result_task = asyncio.ensure_future(handle.result())
    printed = 0
    while not result_task.done():
        try:
            status = await handle.query("status", result_type=DeploymentStatus)
            for event in status.events[printed:]:
                print(format_event(event), file=out, flush=True)
            printed = len(status.events)
        except RPCError:
            pass  # the run may be between workflow tasks; the next poll catches up
        await asyncio.wait([result_task], timeout=1.0)
    result = result_task.result()
    for event in result.events[printed:]:
        print(format_event(event), file=out, flush=True)
    return result


def print_status(status: DeploymentStatus, out: TextIO) -> None:
    print(f"{status.app} ({status.namespace}) {status.strategy} → {status.image}", file=out)
    print(f"phase:   {status.phase.value}", file=out)
    print(f"active:  {status.active_version or '-'}   new: {status.new_version or '-'}", file=out)
    if status.timer_ends_at:
        print(f"timer:   ends {status.timer_ends_at:%Y-%m-%d %H:%M:%S} UTC", file=out)
    if status.result:
        print(f"outcome: {status.result.outcome.value}: {status.result.reason}", file=out)
    print("events:", file=out)
    for event in status.events:
        print("  " + format_event(event), file=out)


# -- commands ------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.image)
    print(f"{spec.app} in namespace {spec.namespace} → {spec.image} ({spec.strategy.type})")
    for number, step in enumerate(PLANS[spec.strategy.type](spec), start=1):
        print(f"  {number}. {step}")
    return EXIT_OK


async def cmd_start(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.image)
    client = await connect()
    try:
        handle = await start_deployment(client, spec, args.by, args.task_queue)
    except AlreadyRunning as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(f"started {handle.id}", file=sys.stderr if args.json else sys.stdout)
    print(f"  {ui_link(client, handle.id)}", file=sys.stderr if args.json else sys.stdout)
    if not args.wait:
        if args.json:
            print(json.dumps({"workflowId": handle.id, "runId": handle.result_run_id}))
        return EXIT_OK
    try:
        result = await follow(handle, sys.stderr if args.json else sys.stdout)
    except WorkflowFailureError as error:
        print(f"{handle.id} failed: {error.cause}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(result.model_dump_json())
    else:
        print(f"{result.outcome.value}: {result.reason}")
    return OUTCOME_EXIT[result.outcome]


async def cmd_signal(args: argparse.Namespace) -> int:
    if not args.by.strip():
        raise InvalidInput("--by: must name who is acting")
    client = await connect()
    handle = await resolve(client, args.id, args.namespace)
    description = await handle.describe()
    if description.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        raise InvalidInput(f"{handle.id} is not running (it is {description.status.name.lower()})")
    await handle.signal(args.command, Decision(by=args.by, reason=args.reason))
    print(f"sent {args.command} to {handle.id} (by {args.by})")
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    client = await connect()
    handle = await resolve(client, args.id, args.namespace)
    status = await handle.query("status", result_type=DeploymentStatus)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print_status(status, sys.stdout)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="validate a spec and print the steps it will take")
    plan.add_argument("spec")
    plan.add_argument("--image", help="deploy this image instead of the spec's")

    start = commands.add_parser("start", help="start a deployment")
    start.add_argument("spec")
    start.add_argument("--image", help="deploy this image instead of the spec's")
    start.add_argument("--wait", action="store_true", help="follow it; the exit code tells the outcome")
    start.add_argument("--json", action="store_true", help="print one machine-readable result")
    start.add_argument("--by", default=default_user(), help="who starts it (default: CI actor or login)")
    start.add_argument("--task-queue", default=os.environ.get("TIDEGATE_TASK_QUEUE", TASK_QUEUE))

    for name, text in (
        ("approve", "let a waiting step go on"),
        ("abort", "stop and put traffic back"),
        ("rollback", "switch traffic back to the previous version"),
    ):
        signal = commands.add_parser(name, help=text)
        signal.add_argument("id", help="workflow id, or app name")
        signal.add_argument("--namespace", default="default", help="the app's Kubernetes namespace")
        signal.add_argument("--by", default=default_user())
        signal.add_argument("--reason", default="")

    status = commands.add_parser("status", help="phase, versions and events of a deployment")
    status.add_argument("id", help="workflow id, or app name")
    status.add_argument("--namespace", default="default")
    status.add_argument("--json", action="store_true")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:  # argparse reports usage errors with code 2 itself
        return int(exit.code or 0)
    try:
        if args.command == "plan":
            return cmd_plan(args)
        runner = {"start": cmd_start, "status": cmd_status}.get(args.command, cmd_signal)
        return asyncio.run(runner(args))
    except InvalidInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except (RPCError, OSError, RuntimeError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    code = main()
    # Exit without interpreter finalisation: the Temporal client's native threads may still call
    # into Python while it is being torn down, which can abort the process after the work is
    # done and turn a clean exit code into a crash. Everything has been printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
