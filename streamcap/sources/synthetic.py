"""``synthetic:shapes``: a live source rendering a scripted shapes storyline.

Frame ``i`` shows media time ``pts_s = i / fps`` of :class:`~streamcap.demo.synthetic.Storyline`
(the same frames :func:`tools.media.render_storyline_file` writes to a file). Rendering and
``frame_transform`` run in a worker thread (``asyncio.to_thread``); the loop only waits.

With ``realtime`` (the default) frames are paced by start time + pts, never by summed sleeps, so
there is no drift; a consumer that falls behind by more than ``handoff_size`` frames misses the
oldest ones, as it would with a camera (each reported as ``on_drop("handoff_full")``). With
``realtime=False`` frames are rendered as fast as the consumer pulls (tests, tools).

Narration (``audio=True`` and ``narration=`` a 16 kHz mono 16-bit WAV, e.g. the demo's
``engines/demo-narration/narration.wav`` from ``tools/narration.py``): ``recv()`` also returns
:class:`~streamcap.core.types.AudioChunk` s of :data:`NARRATION_CHUNK_S` (``pts_s`` = media time,
the same clock as the frames), the WAV looped with ``narration_gap_s`` of silence between loops
(:class:`NarrationLoop`). A chunk is returned once its end is due, before the first frame whose
pts is at or after that end, so sound and picture stay in step; with ``realtime`` a consumer that
falls behind by more than ``audio_handoff_size`` chunks misses the oldest ones
(``on_drop("audio_full")``). Audio stops with the frames at ``duration_s`` (whole chunks only).
Without ``audio=True`` the narration is not even read and the source behaves exactly as without
it; with ``audio=True`` and no narration it delivers frames only.

``.storyline`` is the ground truth (for tests and benchmarks only; the pipeline must not peek).
The ``handoff_size`` default equals ``network.handoff_size`` in :mod:`streamcap.runtime.config`;
network tuning (timeouts, backoff, the stall watchdog) does not apply here and
:func:`~streamcap.sources.url.open_source` leaves it out.
"""

from __future__ import annotations

import asyncio
import math
import wave
from pathlib import Path
from typing import Any

import numpy as np

from streamcap.core.errors import SourceEnded
from streamcap.sources.base import Source
from streamcap.demo.synthetic import Storyline
from streamcap.core.types import AUDIO_RATE, AudioChunk, DropReason, Frame, StreamState
from streamcap.sources.audio import CHUNK_SAMPLES

#: length of each narration chunk: the decoding sources' (50 ms), so ``audio_handoff_size`` means
#: the same time for every kind of source
_CHUNK_SAMPLES = CHUNK_SAMPLES
NARRATION_CHUNK_S = _CHUNK_SAMPLES / AUDIO_RATE


def load_narration(path: str | Path) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM WAV as float32 samples in [-1, 1]. Blocking (a small file).
    Raises ValueError for any other format and OSError when it cannot be read."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != AUDIO_RATE:
                raise ValueError(f"narration {Path(path).name}: expected a {AUDIO_RATE} Hz mono 16-bit "
                                 f"WAV, got {w.getframerate()} Hz, {w.getnchannels()} channel(s), "
                                 f"{8 * w.getsampwidth()}-bit")
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except wave.Error as exc:
        raise ValueError(f"narration {Path(path).name}: not a PCM WAV file ({exc})") from None
    if not len(pcm):
        raise ValueError(f"narration {Path(path).name}: no samples")
    return pcm.astype(np.float32) / 32768.0


class NarrationLoop:
    """Narration samples repeated forever with ``gap_s`` of silence after each pass, cut into
    chunks of ``chunk_samples``: chunk ``k`` covers samples ``[k·n, (k+1)·n)`` of that endless
    signal. Pure."""

    def __init__(self, samples: np.ndarray, gap_s: float, chunk_samples: int = _CHUNK_SAMPLES) -> None:
        if gap_s < 0 or chunk_samples < 1 or not len(samples):
            raise ValueError("need samples, gap_s >= 0 and chunk_samples >= 1")
        self.samples = np.asarray(samples, np.float32)
        self.period = len(self.samples) + round(gap_s * AUDIO_RATE)
        self.chunk_samples = chunk_samples
        self._padded = np.concatenate([self.samples, np.zeros(self.period - len(self.samples),
                                                              np.float32)])

    def chunk(self, k: int) -> np.ndarray:
        n = self.chunk_samples
        start = (k * n) % self.period
        if start + n <= self.period:
            return self._padded[start:start + n].copy()
        return np.take(self._padded, np.arange(start, start + n) % self.period)

    def chunk_start_s(self, k: int) -> float:
        return k * self.chunk_samples / AUDIO_RATE

    def chunk_end_s(self, k: int) -> float:
        return (k + 1) * self.chunk_samples / AUDIO_RATE


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
        narration: str | Path | None = None,
        narration_gap_s: float = 2.0,
        audio_handoff_size: int = 40,
        **hooks: Any,
    ) -> None:
        super().__init__(stream_id, live=realtime, **hooks)
        width, height = size
        if fps <= 0 or width <= 0 or height <= 0:
            raise ValueError("fps and size must be positive")
        if duration_s is not None and duration_s <= 0:
            raise ValueError("duration_s must be positive")
        if handoff_size < 1 or audio_handoff_size < 1:
            raise ValueError("handoff_size and audio_handoff_size must be >= 1")
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
        # the narration only exists with audio=True (otherwise the file is not even opened)
        self._narration: NarrationLoop | None = None
        if self.audio and narration is not None:
            self._narration = NarrationLoop(load_narration(narration), narration_gap_s)
        self._audio_handoff_size = audio_handoff_size
        self._chunk = 0  # the next narration chunk

    def describe(self) -> str:
        w, h = self.size
        return (f"synthetic:shapes seed={self.storyline.seed} fps={self.fps:g} size={w}x{h} "
                f"scene_s={self.storyline.scene_s:g}" + (" with narration" if self._narration else ""))

    async def recv(self) -> Frame | AudioChunk:
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
        if self._narration is not None:
            chunk = await self._due_chunk(loop, pts_s)
            if chunk is not None:
                return chunk
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

    async def _due_chunk(self, loop: asyncio.AbstractEventLoop, next_pts_s: float) -> AudioChunk | None:
        """The next narration chunk when it ends at or before the next frame's pts (and the
        duration); live, paced to its end and dropping what a consumer that is behind missed."""
        narration = self._narration
        assert narration is not None
        if self.live:
            assert self._t0 is not None
            due = math.floor((loop.time() - self._t0) / NARRATION_CHUNK_S + 1e-9)
            oldest_kept = due - self._audio_handoff_size
            while self._chunk < oldest_kept:
                self._chunk += 1
                self._drop(DropReason.AUDIO_FULL)
        k = self._chunk
        end_s = narration.chunk_end_s(k)
        limit_s = next_pts_s if self.duration_s is None else min(next_pts_s, self.duration_s)
        if end_s > limit_s + 1e-9:
            return None
        if self.live:
            assert self._t0 is not None
            wait_s = self._t0 + end_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if self._closed:
                raise SourceEnded(f"stream {self.id} is closed")
        self._chunk = k + 1
        return AudioChunk(self.id, k, self._clock(), narration.chunk_start_s(k), narration.chunk(k))

    def _render(self, index: int, pts_s: float) -> np.ndarray:
        width, height = self.size
        return self._transform(self._renderer.render(pts_s, width, height, index))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._state not in (None, StreamState.ENDED, StreamState.ERROR):
            self._set_state(StreamState.ENDED, "closed")
