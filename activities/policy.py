"""The worker's own limits, whatever a starter sends: the namespaces it deploys to, and who may
approve each app's deployments.

A run asks once, at its start (the `admit` activity), so the answer is in its history; the
namespace allow-list is also enforced on every activity by `NamespaceGuard`, so a run that never
asked (one started before the worker had a policy) cannot reach another namespace either.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from deploy_models import Admission, AdmissionRequest, dns_label


class PolicyError(ValueError):
    """A worker policy that cannot be used: the message names the setting and the problem."""


@dataclass(frozen=True)
class WorkerPolicy:
    """`namespaces`: where this worker may deploy (None: anywhere its RBAC allows).
    `approvers`: by `namespace/app` or `app` (any namespace), who may approve or promote."""

    namespaces: frozenset[str] | None = None
    approvers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def refusal(self, namespace: str) -> ApplicationError:
        allowed = ", ".join(sorted(self.namespaces or ()))
        return ApplicationError(
            f"namespace {namespace!r} is not one this worker deploys to (allowed: {allowed})",
            type="NamespaceNotAllowed",
            non_retryable=True,
        )

    def approvers_of(self, namespace: str, app: str) -> list[str] | None:
        names = self.approvers.get(f"{namespace}/{app}", self.approvers.get(app))
        return list(names) if names is not None else None

    @activity.defn(name="admit")
    async def admit(self, request: AdmissionRequest) -> Admission:
        """Refuse a namespace outside the allow-list; tell the run who may approve it."""
        if not self.allows(request.namespace):
            raise self.refusal(request.namespace)
        return Admission(approvers=self.approvers_of(request.namespace, request.app))


def load_policy(namespaces: list[str], approvers_file: str | None) -> WorkerPolicy:
    """The policy from `--namespaces` and the YAML file of `--approvers` (`app: [names]`, or
    `namespace/app: [names]`), each checked, so a typo stops the worker instead of opening it."""
    for namespace in namespaces:
        try:
            dns_label(namespace)
        except ValueError as error:
            raise PolicyError(f"--namespaces: {error}") from None
    approvers: dict[str, tuple[str, ...]] = {}
    if approvers_file:
        try:
            with open(approvers_file, encoding="utf-8") as stream:
                document = yaml.safe_load(stream)
        except (OSError, yaml.YAMLError) as error:
            raise PolicyError(f"--approvers {approvers_file}: {error}") from None
        if not isinstance(document, dict):
            raise PolicyError(f"--approvers {approvers_file}: must be a mapping of app (or namespace/app) to names")
        for key, names in document.items():
            parts = str(key).split("/")
            try:
                if len(parts) > 2:
                    raise ValueError(f"{key!r} is not app or namespace/app")
                for part in parts:
                    dns_label(part)
            except ValueError as error:
                raise PolicyError(f"--approvers {approvers_file}: {key}: {error}") from None
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise PolicyError(f"--approvers {approvers_file}: {key}: must be a non-empty list of names")
            approvers[str(key)] = tuple(names)
    return WorkerPolicy(namespaces=frozenset(namespaces) if namespaces else None, approvers=approvers)


def namespaces_in(value: Any, depth: int = 3) -> Iterator[str]:
    """Every `namespace` an activity argument names: on the model itself or in models it holds."""
    if depth < 0 or not isinstance(value, BaseModel):
        return
    namespace = getattr(value, "namespace", None)
    if isinstance(namespace, str):
        yield namespace
    for name in type(value).model_fields:
        yield from namespaces_in(getattr(value, name), depth - 1)


class NamespaceGuard(Interceptor):
    """Refuses, before it runs, any activity whose argument names a namespace the policy does not allow."""

    def __init__(self, policy: WorkerPolicy) -> None:
        self.policy = policy

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _GuardedActivity(next, self.policy)


class _GuardedActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, policy: WorkerPolicy) -> None:
        super().__init__(next)
        self.policy = policy

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        for arg in input.args:
            for namespace in namespaces_in(arg):
                if not self.policy.allows(namespace):
                    raise self.policy.refusal(namespace)
        return await super().execute_activity(input)
