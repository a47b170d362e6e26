"""A source that others push frames into: WebRTC (WHIP) sessions and websocket ingest clients.

``push:`` streams have no URL to open; publishers come and go. The pushing side calls
:meth:`PushSource.prepare` in a worker thread (the frame transform: resize for the engine) and
then :meth:`PushSource.push` on the event loop. Frames wait in a bounded queue
(``max_queued_frames``); when it is full the oldest frame is dropped and counted with reason
``ingest_full`` — a live publisher must never wait on the engine.

Idle time: :attr:`PushSource.idle_since_ns` is when the source last had no publisher (its
creation, or the last publisher leaving), None while one is connected; the server expires push
streams that stay idle too long (``ingest.idle_expiry_s``).

Status: STARTING ("waiting for a publisher") → LIVE on the first frame → STALLED when the last
publisher leaves → LIVE when one comes back. ``aclose()`` ends it (ENDED).

Media time is the arrival time since the first frame, unless the publisher supplies ``pts_s``
(a batch of frames in one message); either way it only moves forward.
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np

from streamcap.core.errors import SourceEnded
from streamcap.sources.base import Source
from streamcap.core.types import Frame, StreamState

#: the smallest step between two frames' media times, so pts stay strictly increasing
MIN_PTS_STEP_S = 1e-3


class PushSource(Source):
    def __init__(self, stream_id: str, *, max_queued_frames: int = 32, **hooks) -> None:
        super().__init__(stream_id, live=True, **hooks)
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be at least 1")
        self.max_queued_frames = max_queued_frames
        self._queue: deque[tuple[np.ndarray, int, float]] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._publishers: set[str] = set()
        self._t0_ns: int | None = None
        self._last_pts_s = -1.0
        self._seq = 0
        self.frames_pushed = 0
        self._idle_since_ns: int | None = self._clock()
        self._set_state(StreamState.STARTING, "waiting for a publisher")

    # ------------------------------------------------------------------ publisher side

    @property
    def publishers(self) -> frozenset[str]:
        return frozenset(self._publishers)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle_since_ns(self) -> int | None:
        """Clock time since which no publisher has been connected; None while one is."""
        return self._idle_since_ns

    def publisher_joined(self, name: str) -> None:
        self._publishers.add(name)
        self._idle_since_ns = None

    def publisher_left(self, name: str) -> None:
        if name not in self._publishers:
            return
        self._publishers.discard(name)
        if not self._publishers:
            self._idle_since_ns = self._clock()
        if not self._publishers and self._state is StreamState.LIVE:
            self._set_state(StreamState.STALLED, f"publisher {name} left; waiting for a publisher")

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The frame transform (resize for the engine). Thread-safe: call it off the loop."""
        return self._transform(image)

    def next_pts_s(self, spacing_s: float = 0.0) -> float:
        """The media time a frame pushed now would get (``spacing_s`` after the previous one at
        least): publishers of frame batches use it to space the batch."""
        now = self._clock()
        arrival = 0.0 if self._t0_ns is None else (now - self._t0_ns) / 1e9
        return max(arrival, self._last_pts_s + max(spacing_s, MIN_PTS_STEP_S))

    def push(self, image: np.ndarray, pts_s: float | None = None, publisher: str = "") -> bool:
        """Queue one RGB frame (already prepared). Returns False when the source is closed.
        Call on the event loop thread."""
        if self._closed:
            return False
        now = self._clock()
        if self._t0_ns is None:
            self._t0_ns = now
        pts = self.next_pts_s() if pts_s is None else max(pts_s, self._last_pts_s + MIN_PTS_STEP_S)
        self._last_pts_s = pts
        if len(self._queue) >= self.max_queued_frames:
            self._queue.popleft()
            self._drop("ingest_full")
        self._queue.append((image, now, pts))
        self.frames_pushed += 1
        if self._state is not StreamState.LIVE:
            self._set_state(StreamState.LIVE, f"receiving from {publisher or 'a publisher'}")
        self._ready.set()
        return True

    # ------------------------------------------------------------------ consumer side

    async def recv(self) -> Frame:
        while not self._queue:
            if self._closed:
                raise SourceEnded(f"stream {self.id} is closed")
            self._ready.clear()
            await self._ready.wait()
        image, capture_ns, pts_s = self._queue.popleft()
        frame = Frame(self.id, self._seq, capture_ns, pts_s, image)
        self._seq += 1
        return frame

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._ready.set()
        if self._state not in (None, StreamState.ENDED, StreamState.ERROR):
            self._set_state(StreamState.ENDED, "closed")
