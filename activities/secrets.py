"""Secret values a spec names by reference, read by the activity that needs them, when it needs
them: from the worker's environment or a Kubernetes Secret in the deployment's namespace. Only
the reference is in the workflow history, never the value."""

from __future__ import annotations

import base64
import binascii
import os

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from temporalio.exceptions import ApplicationError

from activities.kubernetes import api_error
from deploy_models import HeaderValue, SecretRef


def unavailable(message: str) -> ApplicationError:
    """A secret that is not there: retrying does not create it."""
    return ApplicationError(message, type="SecretUnavailable", non_retryable=True)


class Secrets:
    """Reads secret values; `api` (the worker's Kubernetes client) is needed for `secretKeyRef`."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.core = client.CoreV1Api(api) if api is not None else None

    async def value(self, ref: SecretRef, namespace: str | None, what: str) -> str:
        if ref.env is not None:
            found = os.environ.get(ref.env)
            if found is None:
                raise unavailable(f"{what}: the worker has no environment variable {ref.env}")
            return found
        assert ref.secret_key_ref is not None
        name, key = ref.secret_key_ref.name, ref.secret_key_ref.key
        if self.core is None or namespace is None:
            raise unavailable(f"{what}: Secret {name} cannot be read here (no Kubernetes client or namespace)")
        try:
            secret = await self.core.read_namespaced_secret(name=name, namespace=namespace)
        except ApiException as error:
            if error.status == 404:
                raise unavailable(f"{what}: Secret {namespace}/{name} does not exist") from None
            raise api_error(error, f"{what}: read Secret {namespace}/{name}") from None
        encoded = (secret.data or {}).get(key)
        if encoded is None:
            raise unavailable(f"{what}: Secret {namespace}/{name} has no key {key!r}")
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise unavailable(f"{what}: Secret {namespace}/{name} key {key!r} is not UTF-8 text") from None

    async def headers(self, headers: dict[str, HeaderValue], namespace: str | None, what: str) -> dict[str, str]:
        """Request headers with every `valueFrom` read."""
        resolved: dict[str, str] = {}
        for name, header in headers.items():
            if header.value_from is not None:
                resolved[name] = await self.value(header.value_from, namespace, f"{what}: header {name}")
            else:
                assert header.value is not None
                resolved[name] = header.value
        return resolved
