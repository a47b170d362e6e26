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

Audio (a source opened with ``audio=True``): publishers call :meth:`PushSource.push_audio` with
16 kHz mono float32 samples; ``recv()`` then returns :class:`~streamcap.core.types.AudioChunk` s
(at most :data:`~streamcap.sources.audio.CHUNK_SAMPLES` each) interleaved with the frames in
arrival order. Their media time is on the same clock as the frames (arrival since the stream's
first frame or sound): a chunk without ``pts_s`` continues the previous one when it arrives within
:data:`AUDIO_JITTER_S` of where that ended (so network jitter leaves no gaps), else it starts at
its arrival time less its duration (the publisher paused). :class:`AudioAnchor` maps a
publisher's own audio clock (RTP timestamps of a WebRTC track) onto this clock. Audio is never
placed before 0 nor overlapping the previous chunk (:class:`~streamcap.sources.audio.AudioTimeline`).
Chunks wait in their own bounded queue (``max_queued_audio`` chunks); when full the oldest is
dropped, counted as ``audio_full``. Without ``audio=True`` pushed audio is discarded
(:attr:`PushSource.wants_audio` lets a publisher skip the work).
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np

from streamcap.core.errors import SourceEnded
from streamcap.sources.audio import CHUNK_SAMPLES, AudioTimeline
from streamcap.sources.base import Source
from streamcap.core.types import AUDIO_RATE, AudioChunk, DropReason, Frame, StreamState

#: the smallest step between two frames' media times, so pts stay strictly increasing
MIN_PTS_STEP_S = 1e-3
#: pushed audio arriving this close after where the previous audio ended continues it
AUDIO_JITTER_S = 0.25
#: an :class:`AudioAnchor` re-anchors when its publisher's clock and arrival differ by more
AUDIO_RESYNC_S = 0.5


class AudioAnchor:
    """Maps a publisher's audio clock (seconds, e.g. an RTP track's ``pts * time_base``) onto the
    push source's media clock: anchored at the arrival of the first piece, then following the
    publisher's clock (smooth, unlike arrival), re-anchored when the two differ by more than
    :data:`AUDIO_RESYNC_S` (a pause, lost packets, a clock that jumped). One per publisher track."""

    def __init__(self) -> None:
        self._media_s: float | None = None
        self._clock_s = 0.0

    def media_s(self, clock_s: float | None, arrival_s: float) -> float:
        """The media time of a piece the publisher stamps ``clock_s`` and that, by arrival, starts
        at ``arrival_s``."""
        if clock_s is None:
            return arrival_s
        if self._media_s is not None:
            mapped = self._media_s + (clock_s - self._clock_s)
            if abs(mapped - arrival_s) <= AUDIO_RESYNC_S:
                return mapped
        self._media_s, self._clock_s = arrival_s, clock_s
        return arrival_s


class PushSource(Source):
    def __init__(self, stream_id: str, *, max_queued_frames: int = 32, max_queued_audio: int = 100,
                 **hooks) -> None:
        super().__init__(stream_id, live=True, **hooks)
        if max_queued_frames < 1 or max_queued_audio < 1:
            raise ValueError("max_queued_frames and max_queued_audio must be at least 1")
        self.max_queued_frames = max_queued_frames
        self.max_queued_audio = max_queued_audio
        # frames (image, capture_ns, pts_s) and audio chunks, in arrival order
        self._queue: deque[tuple[np.ndarray, int, float] | AudioChunk] = deque()
        self._queued_audio = 0
        self._audio_line = AudioTimeline()
        self._audio_seq = 0
        self.audio_pushed_s = 0.0  # seconds of audio queued so far
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

    @property
    def wants_audio(self) -> bool:
        """Whether pushed audio is used (the source was opened with ``audio=True``)."""
        return self.audio and not self._closed

    def arrival_s(self, duration_s: float = 0.0) -> float:
        """Media time now less ``duration_s`` (at least 0): where a piece of that length that has
        just arrived began, by arrival."""
        if self._t0_ns is None:
            return 0.0
        return max(0.0, (self._clock() - self._t0_ns) / 1e9 - duration_s)

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
        if len(self._queue) - self._queued_audio >= self.max_queued_frames:
            self._remove_oldest_frame()
            self._drop("ingest_full")
        self._queue.append((image, now, pts))
        self.frames_pushed += 1
        self._went_live(publisher)
        return True

    def push_audio(self, samples: np.ndarray, pts_s: float | None = None, publisher: str = "") -> bool:
        """Queue 16 kHz mono float32 audio (cut into chunks of at most ``CHUNK_SAMPLES``) starting
        at media time ``pts_s`` (None: by arrival, see the module docstring). Discarded unless the
        source was opened with ``audio=True``. Returns False when the source is closed. Call on
        the event loop thread."""
        if self._closed:
            return False
        if not self.audio or not len(samples):
            return True
        now = self._clock()
        if self._t0_ns is None:
            self._t0_ns = now
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        duration_s = len(samples) / AUDIO_RATE
        if pts_s is None:
            pts_s = self.arrival_s(duration_s)
            end = self._audio_line.end_s
            if end is not None and pts_s <= end + AUDIO_JITTER_S:
                pts_s = end
        placed = self._audio_line.place(max(0.0, pts_s), samples)
        if placed is None:
            return True
        start_s, samples = placed
        for i in range(0, len(samples), CHUNK_SAMPLES):
            piece = np.ascontiguousarray(samples[i:i + CHUNK_SAMPLES])
            if self._queued_audio >= self.max_queued_audio:
                self._remove_oldest_audio()
                self._drop(DropReason.AUDIO_FULL.value)
            self._queue.append(AudioChunk(self.id, self._audio_seq, now, start_s + i / AUDIO_RATE, piece))
            self._audio_seq += 1
            self._queued_audio += 1
        self.audio_pushed_s += len(samples) / AUDIO_RATE
        self._went_live(publisher)
        return True

    def _went_live(self, publisher: str) -> None:
        if self._state is not StreamState.LIVE:
            self._set_state(StreamState.LIVE, f"receiving from {publisher or 'a publisher'}")
        self._ready.set()

    def _remove_oldest_frame(self) -> None:
        for i, item in enumerate(self._queue):
            if not isinstance(item, AudioChunk):
                del self._queue[i]
                return

    def _remove_oldest_audio(self) -> None:
        for i, item in enumerate(self._queue):
            if isinstance(item, AudioChunk):
                del self._queue[i]
                self._queued_audio -= 1
                return

    # ------------------------------------------------------------------ consumer side

    async def recv(self) -> Frame | AudioChunk:
        while not self._queue:
            if self._closed:
                raise SourceEnded(f"stream {self.id} is closed")
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        if isinstance(item, AudioChunk):
            self._queued_audio -= 1
            return item
        image, capture_ns, pts_s = item
        frame = Frame(self.id, self._seq, capture_ns, pts_s, image)
        self._seq += 1
        return frame

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._queued_audio = 0
        self._ready.set()
        if self._state not in (None, StreamState.ENDED, StreamState.ERROR):
            self._set_state(StreamState.ENDED, "closed")
