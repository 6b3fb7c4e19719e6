"""The `notify` activity against a local webhook receiver: formats, secrets, failures, retries."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import Notifier, worker_webhooks
from deploy_models import Notification, Phase, Webhook
from tests.webhooks import Receiver, webhook_receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as running:
        yield running


def notification(event: str = "rolledBack", webhooks: list[Webhook] | None = None, **changes: Any) -> Notification:
    values: dict[str, Any] = dict(
        key="deploy-default-shop/run-1/4",
        event=event,
        app="shop",
        namespace="default",
        strategy="canary",
        image="shop:2.0",
        phase=Phase.ROLLED_BACK,
        message="analysis failed: error-rate = 0.05, above 0.01",
        by=None,
        workflow_id="deploy-default-shop",
        run_id="run-1",
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        webhooks=webhooks or [],
    )
    return Notification(**{**values, **changes})


async def test_generic_and_slack_formats(receiver: Receiver) -> None:
    hooks = [Webhook(url=f"{receiver.url}/generic"), Webhook(url=f"{receiver.url}/slack", format="slack")]
    notifier = Notifier(ui_url="http://temporal-ui:8080")
    delivered = await ActivityEnvironment().run(notifier.notify, notification(webhooks=hooks))

    assert delivered == ["generic webhook at " + receiver.url.removeprefix("http://"), "slack webhook at " + receiver.url.removeprefix("http://")]
    (generic,) = receiver.posts("/generic")
    assert generic == {
        "id": "deploy-default-shop/run-1/4",
        "event": "rolledBack",
        "app": "shop",
        "namespace": "default",
        "strategy": "canary",
        "image": "shop:2.0",
        "phase": "RolledBack",
        "message": "analysis failed: error-rate = 0.05, above 0.01",
        "by": None,
        "workflowId": "deploy-default-shop",
        "runId": "run-1",
        "at": "2026-01-02T03:04:05Z",
        "url": "http://temporal-ui:8080/namespaces/default/workflows/deploy-default-shop",
    }
    (slack,) = receiver.posts("/slack")
    assert slack == {
        "text": "*shop* (default) canary → `shop:2.0`: *rolled back*\n"
        "analysis failed: error-rate = 0.05, above 0.01\n"
        "<http://temporal-ui:8080/namespaces/default/workflows/deploy-default-shop|Open in the Temporal UI>"
    }


async def test_who_aborted_is_in_the_message(receiver: Receiver) -> None:
    hook = Webhook(url=f"{receiver.url}/slack", format="slack")
    await ActivityEnvironment().run(
        Notifier().notify, notification("aborted", [hook], phase=Phase.ABORTED, message="abort by bob: freeze", by="bob")
    )
    assert receiver.posts("/slack")[0]["text"].startswith("*shop* (default) canary → `shop:2.0`: *aborted* by bob\nabort by bob: freeze")


async def test_events_filter_and_worker_defaults(receiver: Receiver) -> None:
    spec_hook = Webhook(url=f"{receiver.url}/spec", events=["promoted"])
    notifier = Notifier(worker_webhooks([f"{receiver.url}/worker"], events=["rolledBack", "aborted"]))
    await ActivityEnvironment().run(notifier.notify, notification("rolledBack", [spec_hook]))
    await ActivityEnvironment().run(notifier.notify, notification("promoted", [spec_hook], phase=Phase.PROMOTED))
    await ActivityEnvironment().run(notifier.notify, notification("started", [spec_hook], phase=Phase.PENDING))
    assert [post["event"] for post in receiver.posts("/spec")] == ["promoted"]
    assert [post["event"] for post in receiver.posts("/worker")] == ["rolledBack"]


async def test_url_from_the_workers_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_TEST_SLACK_URL", f"{receiver.url}/secret")
    hook = Webhook.model_validate({"urlFrom": {"env": "TIDEGATE_TEST_SLACK_URL"}, "format": "slack"})
    delivered = await ActivityEnvironment().run(Notifier().notify, notification(webhooks=[hook]))
    assert delivered == ["slack webhook from $TIDEGATE_TEST_SLACK_URL"] and len(receiver.posts("/secret")) == 1

    missing = Webhook.model_validate({"urlFrom": {"env": "TIDEGATE_TEST_UNSET"}})
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(Notifier().notify, notification(webhooks=[missing]))
    assert raised.value.non_retryable and "no environment variable TIDEGATE_TEST_UNSET" in raised.value.message

    # an unreachable secret URL: the error (which the history keeps) names the reference, not the URL
    monkeypatch.setenv("TIDEGATE_TEST_SLACK_URL", "http://[::1/T000/B000/s3cr3t-token")  # aiohttp quotes a bad URL
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(Notifier().notify, notification(webhooks=[hook]))
    assert "$TIDEGATE_TEST_SLACK_URL" in raised.value.message and "s3cr3t-token" not in raised.value.message


async def test_a_retry_skips_the_webhooks_already_reached(receiver: Receiver) -> None:
    """Down (503): retryable, after trying the others; the next attempt posts only where it failed."""
    receiver.failures["/down"] = 1
    hooks = [Webhook(url=f"{receiver.url}/up"), Webhook(url=f"{receiver.url}/down")]
    first = ActivityEnvironment()
    beats: list[Any] = []
    first.on_heartbeat = lambda *details: beats.append(details)
    with pytest.raises(ApplicationError) as raised:
        await first.run(Notifier().notify, notification(webhooks=hooks))
    assert not raised.value.non_retryable and "answered 503" in raised.value.message
    assert len(receiver.posts("/up")) == 1 and not receiver.posts("/down")

    second = ActivityEnvironment()
    second.info = dataclasses.replace(second.info, attempt=2, heartbeat_details=list(beats[-1]))
    delivered = await second.run(Notifier().notify, notification(webhooks=hooks))
    assert delivered == ["generic webhook at " + receiver.url.removeprefix("http://")]
    assert len(receiver.posts("/up")) == 1 and len(receiver.posts("/down")) == 1
    assert all(receiver.url not in str(beat) for beat in beats)  # a hash, never the URL


async def test_a_rejected_notification_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses["/gone"] = 404
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(Notifier().notify, notification(webhooks=[Webhook(url=f"{receiver.url}/gone")]))
    assert raised.value.non_retryable and "answered 404" in raised.value.message


def test_webhook_spec_errors_name_their_field() -> None:
    from deploy_models import SpecError, parse_spec

    with pytest.raises(SpecError) as raised:
        parse_spec({
            "app": "shop", "image": "shop:2.0", "strategy": {"type": "blueGreen", "blueGreen": {}},
            "notifications": {"webhooks": [
                {"url": "ftp://x", "format": "teams"},
                {"url": "https://x", "urlFrom": {"env": "SLACK"}},
                {"urlFrom": {"env": "not a name"}},
            ]},
        })
    problems = raised.value.problems
    assert "notifications.webhooks[0].url: 'ftp://x' is not an http(s) URL" in problems
    assert any(p.startswith("notifications.webhooks[0].format: 'teams' is not one of the choices") for p in problems)
    assert "notifications.webhooks[1]: set exactly one of url and urlFrom" in problems
    assert any(p.startswith("notifications.webhooks[2].urlFrom.env: 'not a name'") for p in problems)
