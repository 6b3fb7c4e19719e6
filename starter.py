"""tidegate's command line: plan, start, approve, abort, rollback and inspect deployments.

    python starter.py plan SPEC
    python starter.py start SPEC [--wait] [--json]
    python starter.py approve|abort|rollback ID [--by NAME] [--reason TEXT]
    python starter.py status ID [--json]
    python starter.py list [--app A] [--running] | watch ID | retry ID | undo APP

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
from pathlib import Path
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, WorkflowAlreadyStartedError
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
from workflows.analysis import format_value
from workflows.common import (
    DEPLOY_APP,
    DEPLOY_IMAGE,
    DEPLOY_NAMESPACE,
    DEPLOY_PHASE,
    DEPLOY_STRATEGY,
    describe_downtime,
)

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
        raise invalid_spec(path, error.problems) from None


def invalid_spec(path: str, problems: list[str]) -> InvalidInput:
    """One line per problem, each naming its field, under the spec's path."""
    return InvalidInput(f"invalid spec {path}:\n" + "\n".join(f"  {problem}" for problem in problems))


def check_queries(spec: DeploymentSpec, path: str) -> None:
    """Ask the spec's Prometheus to parse each check's query, rendered as the run renders it.

    InvalidInput naming every query it refuses; when it cannot be asked (the worker may reach a
    Prometheus this machine cannot), a one-line warning and nothing else.
    """
    if spec.analysis is None:
        return
    from activities.metrics import PrometheusUnavailable, rejected_query
    from workflows.analysis import Variants
    from workflows.in_place import FIRST_VERSION

    if spec.strategy.type in ("canary", "abTest"):
        subsets = spec.istio.destination_rule
        canary, stable = subsets.canary_subset_name, subsets.stable_subset_name
    elif spec.strategy.type == "blueGreen":
        canary, stable = "green", "blue"
    else:  # one version at a time: its label is only known when the run reads the Deployment
        canary = stable = FIRST_VERSION
    variants = Variants(app=spec.app, namespace=spec.namespace, canary=canary, stable=stable)
    url = spec.analysis.prometheus.url
    problems = []
    for index, check in enumerate(spec.analysis.checks):
        try:
            refused = rejected_query(url, variants.render(check, canary))
        except PrometheusUnavailable as error:
            print(f"warning: queries not checked: Prometheus at {url} {error}", file=sys.stderr)
            return
        if refused is not None:
            problems.append(f"analysis.checks[{index}].query: Prometheus at {url}: {refused}")
    if problems:
        raise invalid_spec(path, problems)


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
        handle = client.get_workflow_handle(candidate, result_type=DeploymentResult)
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


def status_line(status: DeploymentStatus, now: datetime) -> str:
    """One line for a terminal: phase, step, weight, last measurement, timer, elapsed time."""
    parts = [status.phase.value]
    if status.step is not None:
        parts.append(f"step {status.step}")
    if status.weight is not None:
        parts.append(f"weight {status.weight}%")
    if status.last_measurement is not None:
        parts.append(
            " ".join(
                f"{c.name}={format_value(c.value)}" for c in status.last_measurement.checks
            )
        )
    if status.timer_ends_at is not None:
        parts.append(f"timer {max(0, int((status.timer_ends_at - now).total_seconds()))}s left")
    parts.append(f"elapsed {int((now - status.started_at).total_seconds())}s")
    return " | ".join(parts)


async def follow(handle: WorkflowHandle[Any, DeploymentResult], out: TextIO) -> DeploymentResult:
    """Print each event as it is recorded (and, on a terminal, a live status line), then the result."""
    live = out.isatty()
    result_task = asyncio.ensure_future(handle.result())
    printed = 0
    while not result_task.done():
        try:
            status = await handle.query("status", result_type=DeploymentStatus)
            if live:
                print("\r\x1b[K", end="", file=out)
            for event in status.events[printed:]:
                print(format_event(event), file=out, flush=True)
            printed = len(status.events)
            if live:
                print(status_line(status, datetime.now(timezone.utc)), end="", file=out, flush=True)
        except RPCError:
            pass  # the run may be between workflow tasks; the next poll catches up
        await asyncio.wait([result_task], timeout=1.0)
    if live:
        print("\r\x1b[K", end="", file=out)
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
    if status.weight is not None:
        step = f" (step {status.step})" if status.step is not None else ""
        print(f"weight:  {status.weight}% to the new version{step}", file=out)
    if status.downtime is not None:
        print(f"downtime: {describe_downtime(status.downtime)}", file=out)
    if status.last_measurement is not None:
        measurement = status.last_measurement
        figures = "; ".join(
            f"{c.name} {format_value(c.value)}"
            + (f" vs {format_value(c.baseline)} on the stable version (A)" if c.baseline is not None else "")
            + f" ({c.verdict.value})"
            for c in measurement.checks
        )
        print(f"analysis: {measurement.verdict.value} at {measurement.at:%H:%M:%S}: {figures}", file=out)
    if status.result:
        print(f"outcome: {status.result.outcome.value}: {status.result.reason}", file=out)
    print("events:", file=out)
    for event in status.events:
        print("  " + format_event(event), file=out)


# -- commands ------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.image)
    if args.check_queries:
        check_queries(spec, args.spec)
    print(f"{spec.app} in namespace {spec.namespace} → {spec.image} ({spec.strategy.type})")
    for number, step in enumerate(PLANS[spec.strategy.type](spec), start=1):
        print(f"  {number}. {step}")
    return EXIT_OK


async def cmd_start(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.image)
    if args.check_queries:
        check_queries(spec, args.spec)  # before connecting: nothing is started on a refusal
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
    return await wait_and_report(handle, args.json)


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


async def finished_result(handle: WorkflowHandle[Any, Any]) -> DeploymentResult | None:
    """The result of a run that has ended (None while it runs, or when it failed outright)."""
    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        return None
    try:
        return await handle.result()
    except WorkflowFailureError:
        return None


async def original_input(client: Client, handle: WorkflowHandle[Any, Any]) -> DeploymentInput:
    """The input a run was started with, read back from its history."""
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [decoded] = await client.data_converter.decode(started.input.payloads, [DeploymentInput])
    return decoded


def list_query(app: str | None, namespace: str | None, running: bool) -> str:
    clauses = ["DeployApp IS NOT NULL" if not app else f'DeployApp = "{app}"']
    if namespace:
        clauses.append(f'DeployNamespace = "{namespace}"')
    if running:
        clauses.append('ExecutionStatus = "Running"')
    return " AND ".join(clauses)


async def cmd_list(args: argparse.Namespace) -> int:
    client = await connect()
    rows = []
    async for execution in client.list_workflows(list_query(args.app, args.namespace, args.running), limit=args.limit):
        attributes = {key.name: value for key, value in execution.typed_search_attributes}
        rows.append(
            {
                "workflowId": execution.id,
                "runId": execution.run_id,
                "app": attributes.get("DeployApp"),
                "namespace": attributes.get("DeployNamespace"),
                "strategy": attributes.get("DeployStrategy"),
                "image": attributes.get("DeployImage"),
                "phase": attributes.get("DeployPhase"),
                "status": execution.status.name.lower() if execution.status else "unknown",
                "startedAt": execution.start_time.isoformat(),
            }
        )
    rows.sort(key=lambda row: row["startedAt"], reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'started (UTC)':<20} {'app':<16} {'strategy':<10} {'phase':<16} {'image':<28} workflow")
    for row in rows:
        print(
            f"{row['startedAt'][:19]:<20} {row['app'] or '-':<16} {row['strategy'] or '-':<10} "
            f"{row['phase'] or '-':<16} {row['image'] or '-':<28} {row['workflowId']}"
        )
    return EXIT_OK


async def cancelled_result(
    handle: WorkflowHandle[Any, DeploymentResult], error: WorkflowFailureError
) -> DeploymentResult | None:
    """A run cancelled from Temporal (the UI, `temporal workflow cancel`) put traffic back and
    recorded its result before ending as cancelled: that result, for the exit code of an abort."""
    if not isinstance(error.cause, CancelledError):
        return None
    status = await handle.query("status", result_type=DeploymentStatus)
    return status.result


async def wait_and_report(handle: WorkflowHandle[Any, DeploymentResult], as_json: bool) -> int:
    try:
        result = await follow(handle, sys.stderr if as_json else sys.stdout)
    except WorkflowFailureError as error:
        recorded = await cancelled_result(handle, error)
        if recorded is None:
            print(f"{handle.id} failed: {error.cause}", file=sys.stderr)
            return EXIT_ERROR
        result = recorded
    if as_json:
        print(result.model_dump_json())
    else:
        print(f"{result.outcome.value}: {result.reason}")
    return OUTCOME_EXIT[result.outcome]


async def cmd_watch(args: argparse.Namespace) -> int:
    client = await connect()
    handle = await resolve(client, args.id, args.namespace)
    return await wait_and_report(handle, args.json)


async def start_again(client: Client, spec: DeploymentSpec, by: str, task_queue: str, wait: bool, as_json: bool) -> int:
    try:
        handle = await start_deployment(client, spec, by, task_queue)
    except AlreadyRunning as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(f"started {handle.id} ({spec.image})", file=sys.stderr if as_json else sys.stdout)
    print(f"  {ui_link(client, handle.id)}", file=sys.stderr if as_json else sys.stdout)
    return await wait_and_report(handle, as_json) if wait else EXIT_OK


async def cmd_retry(args: argparse.Namespace) -> int:
    """Run a rolled-back or aborted deployment again, with the same spec."""
    client = await connect()
    handle = await resolve(client, args.id, args.namespace)
    result = await finished_result(handle)
    if result is None or result.outcome not in (Outcome.ROLLED_BACK, Outcome.ABORTED, Outcome.FAILED):
        state = "still running" if result is None else f"ended {result.outcome.value}"
        raise InvalidInput(f"{handle.id} {state}: only a rolled back, aborted or failed run can be retried")
    previous = await original_input(client, handle)
    return await start_again(client, previous.spec, args.by, args.task_queue, args.wait, args.json)


async def cmd_undo(args: argparse.Namespace) -> int:
    """Deploy the image that was promoted before the current one, with the latest spec."""
    client = await connect()
    images: list[tuple[str, WorkflowHandle[Any, Any]]] = []
    query = f'DeployApp = "{args.app}" AND DeployNamespace = "{args.namespace}" AND DeployPhase = "Promoted"'
    async for execution in client.list_workflows(query):
        attributes = {key.name: value for key, value in execution.typed_search_attributes}
        images.append((str(attributes.get("DeployImage")), client.get_workflow_handle(execution.id, run_id=execution.run_id)))
    if not images:
        raise InvalidInput(f"no promoted deployment of {args.app} in namespace {args.namespace}")
    current = images[0][0]
    earlier = next((image for image, _ in images[1:] if image != current), None)
    if earlier is None:
        raise InvalidInput(f"{args.app} has no promoted image before {current} to go back to")
    latest = await original_input(client, images[0][1])
    spec = latest.spec.model_copy(update={"image": earlier})
    return await start_again(client, spec, args.by, args.task_queue, args.wait, args.json)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tidegate" if Path(sys.argv[0]).name == "tidegate" else "starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    for validating in (plan, start):
        validating.add_argument(
            "--no-check-queries",
            dest="check_queries",
            action="store_false",
            help="do not ask the spec's Prometheus to parse the analysis queries",
        )

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

    listing = commands.add_parser("list", help="deployments, newest first (Temporal visibility)")
    listing.add_argument("--app")
    listing.add_argument("--namespace")
    listing.add_argument("--running", action="store_true")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")

    watch = commands.add_parser("watch", help="follow a running deployment; the exit code tells the outcome")
    watch.add_argument("id", help="workflow id, or app name")
    watch.add_argument("--namespace", default="default")
    watch.add_argument("--json", action="store_true")

    retry = commands.add_parser("retry", help="run a rolled back or aborted deployment again, same spec")
    retry.add_argument("id", help="workflow id, or app name")
    undo = commands.add_parser("undo", help="deploy the image promoted before the current one")
    undo.add_argument("app")
    for again in (retry, undo):
        again.add_argument("--namespace", default="default")
        again.add_argument("--wait", action="store_true")
        again.add_argument("--json", action="store_true")
        again.add_argument("--by", default=default_user())
        again.add_argument("--task-queue", default=os.environ.get("TIDEGATE_TASK_QUEUE", TASK_QUEUE))

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
        runner = {
            "start": cmd_start,
            "status": cmd_status,
            "list": cmd_list,
            "watch": cmd_watch,
            "retry": cmd_retry,
            "undo": cmd_undo,
        }.get(args.command, cmd_signal)
        return asyncio.run(runner(args))
    except InvalidInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except (RPCError, OSError, RuntimeError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR


def console() -> None:
    """The `tidegate` console command: the same as `python starter.py`."""
    code = main()
    # Exit without interpreter finalisation: the Temporal client's native threads may still call
    # into Python while it is being torn down, which can abort the process after the work is
    # done and turn a clean exit code into a crash. Everything has been printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
