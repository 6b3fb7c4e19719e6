"""The tidegate worker: runs every strategy's workflow and the activities they need.

    python worker.py [--kubeconfig FILE] [--context NAME] [--in-cluster] [--task-queue NAME]
                     [--metrics-port PORT] [--notify-url URL ...] [--notify-format generic|slack]
                     [--namespaces NS,...] [--approvers FILE]

Temporal is reached through the standard environment (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TLS settings or a config profile); the cluster through a kubeconfig
(KUBECONFIG or --kubeconfig) or, inside a cluster, the pod's service account.

With --metrics-port (TIDEGATE_METRICS_PORT) the worker serves Prometheus metrics at /metrics: the
Temporal SDK's and tidegate's own (tidegate_*). --notify-url (TIDEGATE_NOTIFY_URL, comma-separated)
adds webhooks that every deployment's phase changes are posted to, besides the spec's own.

--namespaces (TIDEGATE_NAMESPACES) limits the namespaces this worker deploys to, whatever a
starter sends; --approvers FILE (TIDEGATE_APPROVERS) names who may approve or promote each app:

    shop: [alice, bob]        # the app shop, in any namespace
    prod/payments: [carol]    # the app payments in the namespace prod
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from datetime import timedelta
from collections.abc import Sequence
from typing import Any

from kubernetes.aio import client as kube_client
from kubernetes.aio import config as kube_config
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.kubernetes import KubernetesActivities
from activities.metrics import measure
from activities.notify import Notifier, worker_webhooks
from activities.policy import NamespaceGuard, PolicyError, WorkerPolicy, load_policy
from activities.secrets import Secrets
from activities.smoke import SmokeTester
from deploy_models import NOTIFY_EVENTS
from payload_codec import codec_from_environment, with_codec
from workflows import TASK_QUEUE, WORKFLOWS
from workflows.telemetry import BUCKETS


ABORT_NOTICE = timedelta(seconds=1)


async def connect_temporal(runtime: Runtime | None = None) -> Client:
    """A client configured from the standard TEMPORAL_* environment, with pydantic payloads,
    encrypted when TIDEGATE_PAYLOAD_KEY is set (see payload_codec)."""
    settings = ClientConfig.load_client_connect_config()
    settings.setdefault("target_host", "localhost:7233")
    converter = with_codec(pydantic_data_converter, codec_from_environment())
    return await Client.connect(**settings, data_converter=converter, runtime=runtime)


def metrics_runtime(host: str, port: int) -> Runtime:
    """A Temporal runtime serving Prometheus metrics at http://host:port/metrics: the SDK's
    and tidegate's (recorded by workflows through their replay-safe metric meter)."""
    prometheus = PrometheusConfig(
        bind_address=f"{host}:{port}",
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=BUCKETS,
    )
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))


async def kubernetes_api(
    kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False
) -> kube_client.ApiClient:
    configuration = kube_client.Configuration()
    if in_cluster:
        kube_config.load_incluster_config(client_configuration=configuration)
    else:
        await kube_config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    return kube_client.ApiClient(configuration)


def activities_for(
    api: kube_client.ApiClient, notifier: Notifier | None = None, policy: WorkerPolicy | None = None
) -> list[Any]:
    return [
        *KubernetesActivities(api).all(),
        SmokeTester(Secrets(api)).smoke_test,
        measure,
        (notifier or Notifier()).notify,
        (policy or WorkerPolicy()).admit,
    ]


def build_worker(
    temporal: Client,
    api: kube_client.ApiClient,
    task_queue: str = TASK_QUEUE,
    notifier: Notifier | None = None,
    policy: WorkerPolicy | None = None,
) -> Worker:
    policy = policy or WorkerPolicy()
    return Worker(
        temporal,
        task_queue=task_queue,
        workflows=list(WORKFLOWS.values()),
        activities=activities_for(api, notifier, policy),
        interceptors=[NamespaceGuard(policy)],
        # A poll (a rollout wait) reports to the server at least every second, so it learns of an
        # abort's cancellation within about a second instead of 0.8 × its heartbeat timeout.
        max_heartbeat_throttle_interval=ABORT_NOTICE,
    )


def split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--context", default=None)
    parser.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    parser.add_argument("--task-queue", default=os.environ.get("TIDEGATE_TASK_QUEUE", TASK_QUEUE))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("TIDEGATE_METRICS_PORT") or 0),
                        help="serve Prometheus metrics on this port (0: off)")
    parser.add_argument("--metrics-host", default=os.environ.get("TIDEGATE_METRICS_HOST", "0.0.0.0"))
    parser.add_argument("--notify-url", action="append", default=split(os.environ.get("TIDEGATE_NOTIFY_URL")),
                        help="a webhook every deployment notifies (repeatable)")
    parser.add_argument("--notify-format", choices=("generic", "slack"),
                        default=os.environ.get("TIDEGATE_NOTIFY_FORMAT") or "generic")
    parser.add_argument("--notify-events", type=split, default=split(os.environ.get("TIDEGATE_NOTIFY_EVENTS")),
                        help=f"comma-separated, of {', '.join(NOTIFY_EVENTS)} (default: all)")
    parser.add_argument("--namespaces", type=split, default=split(os.environ.get("TIDEGATE_NAMESPACES")),
                        help="comma-separated: the only namespaces this worker deploys to (default: any)")
    parser.add_argument("--approvers", default=os.environ.get("TIDEGATE_APPROVERS"), metavar="FILE",
                        help="YAML of app (or namespace/app) to the names that may approve or promote it")
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.namespaces, args.approvers)
    except PolicyError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = metrics_runtime(args.metrics_host, args.metrics_port) if args.metrics_port else None
    temporal = await connect_temporal(runtime)
    async with await kubernetes_api(args.kubeconfig, args.context, args.in_cluster) as api:
        notifier = Notifier(
            worker_webhooks(args.notify_url, args.notify_format, args.notify_events),
            ui_url=os.environ.get("TEMPORAL_UI_URL"),
            secrets=Secrets(api),
        )
        worker = build_worker(temporal, api, args.task_queue, notifier, policy)
        if args.metrics_port:
            logging.info("metrics at http://%s:%d/metrics", args.metrics_host, args.metrics_port)
        logging.info("tidegate worker polling task queue %r", args.task_queue)
        await worker.run()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
