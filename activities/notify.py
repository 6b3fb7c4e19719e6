"""Notifications of phase changes: a generic JSON webhook and Slack's incoming-webhook format.

One activity call per phase change posts to the spec's webhooks for that event and to the
worker's own (`--notify-url`). Delivery is at least once: a retry skips the webhooks an earlier
attempt reached (recorded in the heartbeat details), and each payload carries a stable `id` so a
receiver can drop a duplicate. A URL given as `urlFrom: {env: NAME}` or
`urlFrom: {secretKeyRef: {name, key}}` is read here (activities.secrets), so it never enters the
workflow history.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.secrets import Secrets
from deploy_models import Notification, NotifyEvent, Webhook

HEADLINES: dict[str, str] = {
    "started": "deployment started",
    "awaitingApproval": "waiting for approval",
    "promoted": "promoted",
    "rolledBack": "rolled back",
    "aborted": "aborted",
    "failed": "failed",
}
TIMEOUT = aiohttp.ClientTimeout(total=10)


class DeliveryFailed(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def ui_link(ui_url: str | None, temporal_namespace: str, workflow_id: str) -> str | None:
    """The run's page in the Temporal UI, when the worker knows the UI's address."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/namespaces/{temporal_namespace}/workflows/{workflow_id}"


def generic_payload(notification: Notification, link: str | None) -> dict[str, Any]:
    """The notification as JSON (camelCase, like the spec), with `id` for de-duplication."""
    body = notification.model_dump(mode="json", exclude={"key", "webhooks"})
    return {"id": notification.key, **body, "url": link}


def slack_payload(notification: Notification, link: str | None) -> dict[str, Any]:
    """Slack's incoming-webhook message: `{"text": ...}` in Slack's mrkdwn."""
    headline = HEADLINES[notification.event]
    who = f" by {notification.by}" if notification.by else ""
    lines = [
        f"*{notification.app}* ({notification.namespace}) {notification.strategy} → `{notification.image}`: *{headline}*{who}",
        notification.message,
    ]
    if link:
        lines.append(f"<{link}|Open in the Temporal UI>")
    return {"text": "\n".join(lines)}


def target_key(webhook: Webhook) -> str:
    """A name for a webhook that is safe to record: a hash, never the (possibly secret) URL."""
    source = webhook.url if webhook.url is not None else f"ref:{webhook.url_from.describe() if webhook.url_from else ''}"
    return f"{webhook.format}:{hashlib.sha256(source.encode()).hexdigest()[:12]}"


def describe(webhook: Webhook) -> str:
    """How logs and errors name a webhook: its host, or the variable holding its URL."""
    if webhook.url_from is not None:
        return f"{webhook.format} webhook from {webhook.url_from.describe()}"
    host = (webhook.url or "").split("://", 1)[-1].split("/", 1)[0]
    return f"{webhook.format} webhook at {host}"


class Notifier:
    """The `notify` activity, with the worker's own webhooks and the UI's address for links."""

    def __init__(self, defaults: Sequence[Webhook] = (), ui_url: str | None = None, secrets: Secrets | None = None) -> None:
        self.defaults = list(defaults)
        self.ui_url = ui_url
        self.secrets = secrets or Secrets()

    def targets(self, notification: Notification) -> list[Webhook]:
        return [hook for hook in [*notification.webhooks, *self.defaults] if notification.event in hook.events]

    @activity.defn(name="notify")
    async def notify(self, notification: Notification) -> list[str]:
        """Post the notification to every webhook that wants this event; returns which were
        reached. A failure is raised (retried by Temporal) only after trying all of them."""
        details = activity.info().heartbeat_details
        reached: set[str] = set(details[0]) if details else set()
        link = ui_link(self.ui_url, activity.info().workflow_namespace, notification.workflow_id)
        delivered: list[str] = []
        failures: list[DeliveryFailed] = []
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for hook in self.targets(notification):
                key = target_key(hook)
                if key in reached:
                    continue
                try:
                    await self._post(session, hook, notification, link)
                except DeliveryFailed as failure:
                    failures.append(failure)
                    continue
                reached.add(key)
                delivered.append(describe(hook))
                activity.heartbeat(sorted(reached))
        if failures:
            raise ApplicationError(
                "; ".join(str(failure) for failure in failures),
                type="NotificationFailed",
                non_retryable=not any(failure.retryable for failure in failures),
            )
        return delivered

    async def _post(self, session: aiohttp.ClientSession, hook: Webhook, notification: Notification, link: str | None) -> None:
        name = describe(hook)
        url = hook.url
        if hook.url_from is not None:
            try:
                url = await self.secrets.value(hook.url_from, notification.namespace, name)
            except ApplicationError as error:
                raise DeliveryFailed(error.message, retryable=not error.non_retryable) from None
        assert url is not None
        payload = slack_payload(notification, link) if hook.format == "slack" else generic_payload(notification, link)
        try:
            async with session.post(url, json=payload) as response:
                if response.status < 300:
                    return
                text = (await response.text())[:200]
                retryable = response.status == 429 or response.status >= 500
                raise DeliveryFailed(f"{name} answered {response.status}: {text}", retryable)
        except (aiohttp.ClientError, TimeoutError) as error:
            text = str(error).replace(url, "<its URL>")  # a URL given by reference is a secret
            raise DeliveryFailed(f"{name}: {type(error).__name__}: {text}", retryable=True) from None


def worker_webhooks(urls: Sequence[str], format: str = "generic", events: Sequence[NotifyEvent] | None = None) -> list[Webhook]:
    """The worker's own webhooks (`--notify-url`, TIDEGATE_NOTIFY_URL), validated like a spec's."""
    extra: dict[str, Any] = {"events": list(events)} if events else {}
    return [Webhook(url=url, format=format, **extra) for url in urls if url]  # type: ignore[arg-type]
