"""A local webhook receiver for notification tests: records what each path was sent."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web


@dataclass
class Receiver:
    url: str  # base URL; each test path is a webhook of its own
    received: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, int] = field(default_factory=dict)  # path → how many posts fail (503) first
    statuses: dict[str, int] = field(default_factory=dict)  # path → a status always answered

    def posts(self, path: str) -> list[Any]:
        return self.received.get(path, [])


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(url="")

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        path = request.path
        if path in receiver.statuses:
            return aiohttp.web.Response(status=receiver.statuses[path], text="nope")
        if receiver.failures.get(path, 0) > 0:
            receiver.failures[path] -= 1
            return aiohttp.web.Response(status=503, text="try later")
        receiver.received[path].append(await request.json())
        return aiohttp.web.Response(text="ok")

    app = aiohttp.web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
