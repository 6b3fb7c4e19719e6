"""Headless Chromium driven over its DevTools protocol: what a person would see on a page.

The Temporal UI is a single-page app that keeps requests open, so `--dump-dom` either returns
before the data arrives or never returns; instead the test opens the page and polls the rendered
text (`document.body.innerText`) until what it expects is there, with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
)


class Browser:
    """One Chromium process with one page; `async with Browser(binary, profile) as page: ...`."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the wrapper script and every child end together
        )
        try:
            port = await self._devtools_port()
            self.session = aiohttp.ClientSession()
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(target for target in targets if target["type"] == "page")
            self.socket = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        await self.close()

    async def _devtools_port(self, timeout: float = 60.0) -> str:
        """Chromium writes the port it chose to DevToolsActivePort in the profile."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode} before it opened its DevTools port")
            if marker.exists() and len(marker.read_text().splitlines()) >= 2:
                return marker.read_text().splitlines()[0]
            await asyncio.sleep(0.05)
        raise TimeoutError(f"chromium did not open its DevTools port within {timeout}s")

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None and self.process.returncode is None:
            group = self.process.pid
            os.killpg(group, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                os.killpg(group, signal.SIGKILL)
                await self.process.wait()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the browser outlives its wrapper script briefly
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                await asyncio.sleep(0.05)
            else:
                os.killpg(group, signal.SIGKILL)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are skipped."""
        assert self.socket is not None
        number = next(self.ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        async for message in self.socket:
            data = json.loads(message.data)
            if data.get("id") == number:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data["result"]
                return result
        raise RuntimeError("the DevTools connection closed")

    async def text(self) -> str:
        """The page's rendered text, then the text of its frames (the Temporal UI renders
        Markdown, such as a summary or current details, in sandboxed iframes that the page's
        own script cannot read), each frame's words joined by single spaces."""
        found = await self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True)
        document = await self.call("DOM.getDocument", depth=-1, pierce=True)
        frames = [" ".join(" ".join(_texts(frame)).split()) for frame in _frames(document["root"])]
        return "\n".join([str(found["result"].get("value", "")), *frames])

    async def open(self, url: str, expect: Sequence[str], timeout: float = 60.0) -> str:
        """Open `url` and return the page's text once every string of `expect` is on it."""
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.text()
            if all(part in text for part in expect):
                return text
            await asyncio.sleep(0.1)
        missing = [part for part in expect if part not in text]
        raise AssertionError(f"{url} did not show {missing} within {timeout}s; it shows:\n{text[:3000]}")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _frames(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents of every iframe under `node`, nested ones included."""
    found = []
    if "contentDocument" in node:
        found.append(node["contentDocument"])
        found += _frames(node["contentDocument"])
    for child in [*node.get("children", []), *node.get("shadowRoots", [])]:
        found += _frames(child)
    return found


def _texts(node: dict[str, Any]) -> list[str]:
    """The text nodes of one document, without scripts, styles or nested frames."""
    if node.get("nodeName") in ("SCRIPT", "STYLE", "IFRAME"):
        return []
    if node.get("nodeType") == 3:
        return [node.get("nodeValue", "")]
    return [text for child in [*node.get("children", []), *node.get("shadowRoots", [])] for text in _texts(child)]
