"""The smoke test makes real HTTP requests to a real (local) server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import web
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.smoke import SmokeTester
from deploy_models import SmokeCheck


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/broken", broken)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def check(url: str, status: int = 200, timeout: float = 1.0) -> SmokeCheck:
    return SmokeCheck(url=url, expect_status=status, timeout=timedelta(seconds=timeout))


async def test_expected_status_passes(server: str) -> None:
    result = await ActivityEnvironment().run(SmokeTester().smoke_test, check(f"{server}/health"))
    assert result.status == 200 and result.elapsed_ms >= 0


async def test_unexpected_status_is_a_retryable_verdict(server: str) -> None:
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(SmokeTester().smoke_test, check(f"{server}/broken"))
    assert caught.value.type == "SmokeTestFailed" and not caught.value.non_retryable
    assert "answered 503, expected 200" in caught.value.message


async def test_expected_non_200_status(server: str) -> None:
    result = await ActivityEnvironment().run(SmokeTester().smoke_test, check(f"{server}/broken", status=503))
    assert result.status == 503


async def test_timeout_and_refused_connection_fail(server: str) -> None:
    with pytest.raises(ApplicationError, match="TimeoutError"):
        await ActivityEnvironment().run(SmokeTester().smoke_test, check(f"{server}/slow", timeout=0.2))
    with pytest.raises(ApplicationError, match="failed"):
        await ActivityEnvironment().run(SmokeTester().smoke_test, check("http://127.0.0.1:1/health"))
