"""A minimal headless-Chromium driver over the DevTools protocol (CDP), using ``websockets``.

Enough to open a page, wait for a condition in its DOM, and take a screenshot: used to render the
overlay for the README and by browser tests. Chromium is Debian's ``chromium`` package; it runs
with a fresh profile, loopback only, and no background networking.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import websockets

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """``async with Chromium() as b: page = await b.new_page(url)``."""

    def __init__(self, width: int = 1280, height: int = 720, extra_flags: list[str] | None = None) -> None:
        self.width, self.height = width, height
        self.extra_flags = extra_flags or []
        self._proc: subprocess.Popen | None = None
        self._profile: tempfile.TemporaryDirectory | None = None
        self._ws = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Chromium:
        exe = find_chromium()
        if exe is None:
            raise BrowserError("chromium is not installed (Debian package: chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="streamcap-chromium-", ignore_cleanup_errors=True)
        self._proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}",
             f"--window-size={self.width},{self.height}", *self.extra_flags, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with code {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise BrowserError("chromium did not open its DevTools port within 30 s")
            await asyncio.sleep(0.05)  # polling a file another process writes; bounded by the deadline
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=2**26)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
        if self._profile is not None:
            self._profile.cleanup()

    async def _read(self) -> None:
        async for raw in self._ws:
            msg = json.loads(raw)
            fut = self._pending.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                if "error" in msg:
                    fut.set_exception(BrowserError(str(msg["error"])))
                else:
                    fut.set_result(msg.get("result", {}))

    async def send(self, method: str, params: dict | None = None, session: str | None = None,
                   timeout: float = 30) -> dict:
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self._ws.send(json.dumps(msg))
        return await asyncio.wait_for(fut, timeout)

    async def new_page(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        await page.send("Page.enable")
        await page.send("Page.navigate", {"url": url})
        return page


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    async def send(self, method: str, params: dict | None = None) -> dict:
        return await self.browser.send(method, params, self.session)

    async def evaluate(self, expression: str):
        r = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise BrowserError(str(r["exceptionDetails"]))
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0, poll_s: float = 0.1):
        """Until the JS ``expression`` is truthy; returns its value. Fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout}s waiting for {expression}")
            await asyncio.sleep(poll_s)  # polling the page's DOM; the deadline is the failure limit

    async def screenshot(self, path: str | Path) -> Path:
        r = await self.send("Page.captureScreenshot", {"format": "png"})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path
