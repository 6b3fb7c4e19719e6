"""The tidegate worker: runs every strategy's workflow and the activities they need.

    python worker.py [--kubeconfig FILE] [--context NAME] [--in-cluster] [--task-queue NAME]

Temporal is reached through the standard environment (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TLS settings or a config profile); the cluster through a kubeconfig
(KUBECONFIG or --kubeconfig) or, inside a cluster, the pod's service account.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

from kubernetes.aio import client as kube_client
from kubernetes.aio import config as kube_config
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.worker import Worker

from activities.kubernetes import KubernetesActivities
from activities.metrics import measure
from activities.smoke import smoke_test
from workflows import TASK_QUEUE, WORKFLOWS


async def connect_temporal() -> Client:
    """A client configured from the standard TEMPORAL_* environment, with pydantic payloads."""
    settings = ClientConfig.load_client_connect_config()
    settings.setdefault("target_host", "localhost:7233")
    return await Client.connect(**settings, data_converter=pydantic_data_converter)


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


def activities_for(api: kube_client.ApiClient) -> list[Any]:
    return [*KubernetesActivities(api).all(), smoke_test, measure]


def build_worker(temporal: Client, api: kube_client.ApiClient, task_queue: str = TASK_QUEUE) -> Worker:
    return Worker(
        temporal,
        task_queue=task_queue,
        workflows=list(WORKFLOWS.values()),
        activities=activities_for(api),
    )


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--context", default=None)
    parser.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    parser.add_argument("--task-queue", default=os.environ.get("TIDEGATE_TASK_QUEUE", TASK_QUEUE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    temporal = await connect_temporal()
    async with await kubernetes_api(args.kubeconfig, args.context, args.in_cluster) as api:
        worker = build_worker(temporal, api, args.task_queue)
        logging.info("tidegate worker polling task queue %r", args.task_queue)
        await worker.run()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
