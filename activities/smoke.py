"""The HTTP smoke test: one GET, one verdict; Temporal's retry policy makes the attempts."""

from __future__ import annotations

import time

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.secrets import Secrets
from deploy_models import SmokeCheck, SmokeResult


class SmokeTester:
    """Smoke tests whose headers may name secrets, read here (never in the history)."""

    def __init__(self, secrets: Secrets | None = None) -> None:
        self.secrets = secrets or Secrets()

    @activity.defn(name="smoke_test")
    async def smoke_test(self, check: SmokeCheck) -> SmokeResult:
        """GET `check.url`; anything but `expect_status` in time is a (retryable) SmokeTestFailed."""
        headers = await self.secrets.headers(check.headers, check.namespace, f"smoke test {check.url}")
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=check.timeout.total_seconds())
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(check.url, headers=headers, allow_redirects=False) as response:
                    status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApplicationError(
                f"GET {check.url} failed: {type(error).__name__} {error}".strip(), type="SmokeTestFailed"
            ) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        if status != check.expect_status:
            raise ApplicationError(
                f"GET {check.url} answered {status}, expected {check.expect_status}", type="SmokeTestFailed"
            )
        return SmokeResult(url=check.url, status=status, elapsed_ms=elapsed_ms)
