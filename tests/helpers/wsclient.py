"""A real websocket client for tests: connects to a streamcap server, decodes every message with
``streamcap.outputs.wire`` and lets a test wait for a condition (on events, with a timeout as the failure
limit; never sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import websockets

from streamcap.outputs import wire


class WireClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[tuple[float, object]] = []  # (monotonic arrival, decoded message)
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._ws = None
        self.closed: BaseException | None = None

    async def __aenter__(self) -> WireClient:
        self._ws = await websockets.connect(self.url, max_size=2**22)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    async def send(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send(text)

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                self.messages.append((time.monotonic(), wire.decode_server_message(raw)))
                self._changed.set()
        except websockets.ConnectionClosed as e:
            self.closed = e
            self._changed.set()

    def of(self, kind: type, stream: str | None = None) -> list:
        return [m for _, m in self.messages if isinstance(m, kind) and (stream is None or m.stream == stream)]

    def timed(self, kind: type, stream: str | None = None) -> list[tuple[float, object]]:
        return [(t, m) for t, m in self.messages
                if isinstance(m, kind) and (stream is None or m.stream == stream)]

    async def wait_for(self, predicate: Callable[[], object], timeout: float, what: str = "condition",
                       poll_s: float = 0.1):
        """Wait until ``predicate()`` is truthy; returns its value. Fails after ``timeout`` s.
        Re-checks on every message and at least every ``poll_s`` (for predicates on server state)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, poll_s))
            except TimeoutError:
                continue
