"""``synthetic:shapes``: a live source rendering a scripted shapes storyline.

Frame ``i`` shows media time ``pts_s = i / fps`` of :class:`~streamcap.demo.synthetic.Storyline`
(the same frames :func:`tools.media.render_storyline_file` writes to a file). Rendering and
``frame_transform`` run in a worker thread (``asyncio.to_thread``); the loop only waits.

With ``realtime`` (the default) frames are paced by start time + pts, never by summed sleeps, so
there is no drift; a consumer that falls behind by more than ``handoff_size`` frames misses the
oldest ones, as it would with a camera (each reported as ``on_drop("handoff_full")``). With
``realtime=False`` frames are rendered as fast as the consumer pulls (tests, tools).

``.storyline`` is the ground truth (for tests and benchmarks only; the pipeline must not peek).
The ``handoff_size`` default equals ``network.handoff_size`` in :mod:`streamcap.runtime.config`;
network tuning (timeouts, backoff, the stall watchdog) does not apply here and
:func:`~streamcap.sources.url.open_source` leaves it out.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from streamcap.core.errors import SourceEnded
from streamcap.sources.base import Source
from streamcap.demo.synthetic import Storyline
from streamcap.core.types import Frame, StreamState


class SyntheticShapesSource(Source):
    def __init__(
        self,
        stream_id: str,
        *,
        seed: int = 1,
        fps: float = 10.0,
        size: tuple[int, int] = (320, 240),
        scene_s: float = 6.0,
        realtime: bool = True,
        duration_s: float | None = None,
        handoff_size: int = 4,
        **hooks: Any,
    ) -> None:
        super().__init__(stream_id, live=realtime, **hooks)
        width, height = size
        if fps <= 0 or width <= 0 or height <= 0:
            raise ValueError("fps and size must be positive")
        if duration_s is not None and duration_s <= 0:
            raise ValueError("duration_s must be positive")
        if handoff_size < 1:
            raise ValueError("handoff_size must be >= 1")
        self.fps = float(fps)
        self.size = (int(width), int(height))
        self.duration_s = duration_s
        self.storyline = Storyline(seed, scene_s, aspect=width / height)
        # rendering uses its own (identical) storyline: its scene cache is touched only by the
        # worker thread, so ground-truth readers on the loop never race it
        self._renderer = Storyline(seed, scene_s, aspect=width / height)
        self._handoff_size = handoff_size
        self._index = 0
        self._t0: float | None = None  # loop time of frame 0
        self._closed = False

    def describe(self) -> str:
        w, h = self.size
        return (f"synthetic:shapes seed={self.storyline.seed} fps={self.fps:g} size={w}x{h} "
                f"scene_s={self.storyline.scene_s:g}")

    async def recv(self) -> Frame:
        if self._closed or self._state in (StreamState.ENDED, StreamState.ERROR):
            raise SourceEnded(f"stream {self.id}: synthetic source is over")
        loop = asyncio.get_running_loop()
        if self._state is None:
            self._set_state(StreamState.STARTING, self.describe())
        if self.live:
            if self._t0 is None:
                self._t0 = loop.time()
            due = math.floor((loop.time() - self._t0) * self.fps)
            oldest_kept = due - (self._handoff_size - 1)
            while self._index < oldest_kept:  # frames a camera would have overwritten
                self._index += 1
                self._drop("handoff_full")
        index = self._index
        pts_s = index / self.fps
        if self.duration_s is not None and pts_s >= self.duration_s - 1e-9:
            self._set_state(StreamState.ENDED, f"reached duration {self.duration_s:g} s")
            raise SourceEnded(f"stream {self.id}: synthetic source reached its duration")
        image = await asyncio.to_thread(self._render, index, pts_s)
        if self.live:
            assert self._t0 is not None
            wait_s = self._t0 + pts_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        if self._closed:
            raise SourceEnded(f"stream {self.id} is closed")
        self._index = index + 1
        frame = Frame(self.id, index, self._clock(), pts_s, image)
        if self._state is not StreamState.LIVE:
            self._set_state(StreamState.LIVE, self.describe(), fps=self.fps)
        return frame

    def _render(self, index: int, pts_s: float) -> np.ndarray:
        width, height = self.size
        return self._transform(self._renderer.render(pts_s, width, height, index))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._state not in (None, StreamState.ENDED, StreamState.ERROR):
            self._set_state(StreamState.ENDED, "closed")
