"""Files, RTSP, HTTP and webcams through OpenCV's VideoCapture (FFmpeg backend).

Threading contract
------------------
Each connection attempt runs one daemon *reader thread* that opens the capture, reads, converts
BGR→RGB, applies ``frame_transform`` and posts results to the event loop with
``call_soon_threadsafe``; nothing blocking ever runs on the loop. Connections are numbered by a
*generation* counter: abandoning a connection just bumps the counter, and its thread exits (and
releases its capture) as soon as its blocking call returns — posts from an old generation are
ignored. A *supervisor* task on the loop watches each connection: open outcome, read failures and,
for live sources, frame age (the watchdog), then decides to end, fail or reconnect.

Handoff
-------
Frames wait in a small bounded deque (``handoff_size``). Live sources drop the oldest frame when
it is full (reported as ``on_drop("handoff_full")``) so the consumer always gets recent frames;
files make the reader wait for room (nothing is lost).

Timestamps
----------
``seq`` counts frames of the stream, across reconnects (a gap means a frame was dropped).
``capture_ns`` is the injected clock when the frame was decoded. ``pts_s`` follows the
decoder's position (``CAP_PROP_POS_MSEC``) relative to the first frame; without one it falls
back to frame index / fps (files) or capture time (live). Each connection of a live stream is a
*segment*: the first starts at 0; a later one starts at the capture time elapsed since the
stream's first frame (media time keeps pace with real time across an outage, and stays ahead of
the previous segment) and follows the decoder from there. ``pts_s`` is strictly increasing: a
decoder timestamp that does not advance is nudged 1 ms past the previous one.

Live failure handling
---------------------
OpenCV opens with ``CAP_PROP_OPEN_TIMEOUT_MSEC``/``CAP_PROP_READ_TIMEOUT_MSEC``. A read that
fails (dead server: ``read()`` is False at once and never recovers) ends the connection → status
RECONNECTING. A server that stops sending without closing makes ``read()`` block (and early
timed-out reads may still return True), so the return value is not trusted alone: when no frame
arrived for ``stall_timeout_s`` the watchdog reports STALLED, abandons the reader and reconnects
(RECONNECTING). Reconnects wait a capped, jittered exponential backoff; the first new frame makes
the stream LIVE again.

FFmpeg capture options
----------------------
FFmpeg probing of an RTSP stream takes ~3 s by default. OpenCV's FFmpeg backend takes its
demuxer options only from the ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` environment variable, which it
reads (``getenv``) each time a capture is opened (``CvCapture_FFMPEG::open`` in OpenCV's
``cap_ffmpeg_impl.hpp``); the open parameters carry only fixed ``CAP_PROP_*`` keys. So importing
this module changes nothing: just before the first connection starts its reader thread, the
loop thread sets the variable to RTSP over TCP with short probing (:data:`FFMPEG_CAPTURE_OPTIONS`)
unless it is already set — a user's own value wins. That brings opening a loopback RTSP stream
down to ~0.2 s (measured 0.18–0.33 s; first frame 0.3 s after the call). The value is
process-wide and written at most once, so captures opened later by any thread read a stable
value.

Defaults
--------
The keyword defaults of :class:`OpenCVSource` equal those of ``[network]`` and
``pipeline.stall_timeout_s`` in :mod:`streamcap.runtime.config`, the only source of defaults;
the service passes the configured values (``source_options(config)``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import threading
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import cv2
import numpy as np

from streamcap.core.errors import SourceEnded, SourceError
from streamcap.sources.backoff import Backoff
from streamcap.sources.base import Source
from streamcap.sources.url import SourceKind, SourceSpec, sanitize_url
from streamcap.core.types import Frame, StreamState

log = logging.getLogger(__name__)

#: FFmpeg options for every OpenCV capture in this process (``key;value|key;value``): RTSP over
#: TCP (no UDP loss, works through NAT), and stream probing cut from ~3 s to 0.1 s
FFMPEG_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;100000|probesize;65536"
FFMPEG_CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def ensure_capture_options() -> None:
    """Set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` to :data:`FFMPEG_CAPTURE_OPTIONS` unless the
    environment already has a value (then that value is used). Call before opening a capture."""
    os.environ.setdefault(FFMPEG_CAPTURE_OPTIONS_ENV, FFMPEG_CAPTURE_OPTIONS)


_OPEN_GRACE_S = 2.0  # the watchdog gives OpenCV's own open timeout this much slack
_PTS_NUDGE_S = 1e-3


class _Kind(str, Enum):
    OPENED = "opened"
    OPEN_FAILED = "open_failed"
    READ_FAILED = "read_failed"  # read() returned False (for files: the end)
    CRASHED = "crashed"  # an unexpected error in the reader (e.g. frame_transform raised)
    STALLED = "stalled"  # the watchdog's verdict: no frame for stall_timeout_s


@dataclass(frozen=True, slots=True)
class _Event:
    gen: int
    kind: _Kind
    detail: str = ""
    fps: float = 0.0


@dataclass(frozen=True, slots=True)
class _Decoded:
    gen: int
    image: np.ndarray
    capture_ns: int
    pos_ms: float
    index: int  # frame index within its connection


class OpenCVSource(Source):
    """A file, RTSP, HTTP or webcam source. See the module docstring for the contract.

    Tuning (all optional): ``stall_timeout_s`` (live watchdog), ``open_timeout_s`` and
    ``read_timeout_s`` (given to OpenCV), ``backoff`` and ``rng`` (reconnect delays),
    ``handoff_size``, ``max_failures`` (consecutive failed connections before giving up with
    ERROR; None retries forever; ``"auto"``: forever for network streams, 3 for webcams).
    """

    def __init__(
        self,
        stream_id: str,
        spec: SourceSpec,
        *,
        stall_timeout_s: float = 2.0,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        handoff_size: int = 4,
        max_failures: int | None | Literal["auto"] = "auto",
        **hooks: Any,
    ) -> None:
        if spec.kind is SourceKind.SYNTHETIC:
            raise ValueError("synthetic sources are not OpenCV sources")
        super().__init__(stream_id, live=spec.live, **hooks)
        if stall_timeout_s <= 0 or open_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if handoff_size < 1:
            raise ValueError("handoff_size must be >= 1")
        self.spec = spec
        self.safe_url = sanitize_url(spec.location)
        self._stall_timeout_s = stall_timeout_s
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._backoff = backoff if backoff is not None else Backoff()
        self._rng = rng if rng is not None else random.Random()
        self._handoff_size = handoff_size
        if max_failures == "auto":
            max_failures = 3 if spec.kind is SourceKind.WEBCAM else None
        self._max_failures = max_failures

        self._frames: deque[Frame] = deque()
        # files: the reader takes a slot per frame and the consumer gives it back (BLOCK policy)
        self._slots = None if self.live else threading.Semaphore(handoff_size)
        self._ready: asyncio.Event | None = None
        self._events: asyncio.Queue[_Event] | None = None
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self._closed = False
        self._ended = False
        self._failure: str | None = None

        self._seq = 0
        self._failures = 0  # consecutive connections that delivered no frame
        self._last_frame_at = 0.0  # loop time of the newest accepted frame
        self._first_capture_ns: int | None = None
        self._last_pts_s: float | None = None
        self._nominal_fps = 0.0
        self._seg_base_s = 0.0
        self._seg_first_pos_ms: float | None = None
        self._seg_first_capture_ns = 0
        self._seg_frames = 0
        self._connect_started_at = 0.0

    # ------------------------------------------------------------------ public API

    async def recv(self) -> Frame:
        if self._closed:
            raise SourceEnded(f"stream {self.id} is closed")
        self._ensure_started()
        assert self._ready is not None
        while True:
            if self._frames:
                frame = self._frames.popleft()
                if self._slots is not None:
                    self._slots.release()
                return frame
            if self._failure is not None:
                raise SourceError(self._failure)
            if self._ended:
                self._set_state(StreamState.ENDED, f"end of {self.safe_url}")
                raise SourceEnded(f"stream {self.id}: end of {self.safe_url}")
            if self._closed:
                raise SourceEnded(f"stream {self.id} is closed")
            self._ready.clear()
            await self._ready.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._generation += 1  # abandon the reader; it exits when its blocking call returns
        if self._slots is not None:
            for _ in range(self._handoff_size + 1):
                self._slots.release()  # unblock a file reader waiting for room
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self._frames.clear()
        if self._state not in (None, StreamState.ENDED, StreamState.ERROR):
            self._set_state(StreamState.ENDED, "closed")
        if self._ready is not None:
            self._ready.set()

    # ------------------------------------------------------------------ loop side

    def _ensure_started(self) -> None:
        if self._task is not None or self._failure is not None or self._ended:
            return
        self._ready = asyncio.Event()
        self._events = asyncio.Queue()
        self._set_state(StreamState.STARTING, f"opening {self.safe_url}", url=self.safe_url)
        self._task = asyncio.create_task(self._supervise(), name=f"source-{self.id}")

    async def _supervise(self) -> None:
        try:
            await self._run_connections()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # boundary: a bug here must become an ERROR status, not a hang
            log.exception("stream %s: source supervisor failed", self.id)
            self._fail(f"internal error reading {self.safe_url}: {exc!r}")

    async def _run_connections(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gen = self._start_reader(loop)
            kind, detail = await self._watch(gen, loop)
            frames = self._seg_frames
            self._generation += 1  # abandon this connection's reader (no-op if it has exited)
            if not self.live:
                if kind is _Kind.READ_FAILED and frames > 0:
                    self._ended = True  # recv() drains the handoff, then reports ENDED
                    self._wake()
                else:
                    self._fail(detail)
                return
            if kind is _Kind.CRASHED:
                self._fail(detail)
                return
            if frames == 0:
                self._failures += 1
            if self._max_failures is not None and self._failures >= self._max_failures:
                self._fail(f"{detail}; gave up after {self._failures} failed attempts")
                return
            if kind is _Kind.STALLED and self._state is StreamState.LIVE:
                self._set_state(StreamState.STALLED, detail, code=SourceError.code)
            delay_s = self._backoff.delay_s(self._failures, self._rng)
            if not self._set_state(StreamState.RECONNECTING, detail, code=SourceError.code,
                                   retry_in_s=round(delay_s, 3)):
                log.debug("stream %s: still reconnecting (%s); retry in %.2f s", self.id, detail,
                          delay_s)
            await asyncio.sleep(delay_s)
            self._reconnecting()

    async def _watch(self, gen: int, loop: asyncio.AbstractEventLoop) -> tuple[_Kind, str]:
        """Wait until connection ``gen`` is over; return why (kind and words)."""
        open_limit_s = self._open_timeout_s + _OPEN_GRACE_S
        event = await self._next_event(gen, open_limit_s)
        if event is None:
            return _Kind.OPEN_FAILED, (f"opening {self.safe_url} timed out after "
                                       f"{open_limit_s:.1f} s")
        if event.kind is not _Kind.OPENED:
            return event.kind, event.detail
        self._nominal_fps = event.fps
        opened_at = loop.time()
        log.info("stream %s: opened %s in %.3f s (%.3g fps)", self.id, self.safe_url,
                 opened_at - self._connect_started_at, event.fps)
        while True:
            if not self.live:  # a file waits for its consumer: no watchdog
                event = await self._next_event(gen, None)
            else:
                newest = max(opened_at, self._last_frame_at)
                remaining_s = newest + self._stall_timeout_s - loop.time()
                if remaining_s <= 0:
                    return _Kind.STALLED, f"no frame for {loop.time() - newest:.1f} s"
                event = await self._next_event(gen, remaining_s)
            if event is not None:
                return event.kind, event.detail

    async def _next_event(self, gen: int, timeout_s: float | None) -> _Event | None:
        assert self._events is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    event = await self._events.get()
                    if event.gen == gen:
                        return event
        except TimeoutError:
            return None

    def _start_reader(self, loop: asyncio.AbstractEventLoop) -> int:
        ensure_capture_options()  # here, on the loop thread, before the reader opens its capture
        self._generation += 1
        gen = self._generation
        self._seg_first_pos_ms = None
        self._seg_frames = 0
        self._connect_started_at = loop.time()
        thread = threading.Thread(target=self._read_loop, args=(gen, loop), daemon=True,
                                  name=f"streamcap-source-{self.id}-{gen}")
        thread.start()
        return gen

    def _on_posted(self, item: _Event | _Decoded) -> None:
        """Runs on the loop: route what a reader posted, ignoring abandoned connections."""
        if item.gen != self._generation or self._closed:
            return
        if isinstance(item, _Decoded):
            self._accept(item)
        else:
            assert self._events is not None
            self._events.put_nowait(item)

    def _accept(self, item: _Decoded) -> None:
        pts_s = self._pts_s(item)
        self._last_pts_s = pts_s
        frame = Frame(self.id, self._seq, item.capture_ns, pts_s, item.image)
        self._seq += 1
        self._seg_frames += 1
        self._failures = 0
        self._last_frame_at = asyncio.get_running_loop().time()
        if self.live and len(self._frames) >= self._handoff_size:
            self._frames.popleft()
            self._drop("handoff_full")
        self._frames.append(frame)
        if self._state is not StreamState.LIVE:
            self._set_state(StreamState.LIVE, f"receiving {self.safe_url}", fps=self._nominal_fps)
        self._wake()

    def _pts_s(self, item: _Decoded) -> float:
        """Media time of a decoded frame (see "Timestamps" in the module docstring)."""
        fps = self._nominal_fps
        if self._seg_first_pos_ms is None:  # first frame of this connection: a new segment
            self._seg_first_pos_ms = item.pos_ms
            self._seg_first_capture_ns = item.capture_ns
            if self._first_capture_ns is None or self._last_pts_s is None:
                self._first_capture_ns = item.capture_ns
                self._seg_base_s = 0.0
            else:  # after a reconnect, media time resumes at the real time elapsed
                elapsed_s = (item.capture_ns - self._first_capture_ns) / 1e9
                step_s = 1.0 / fps if fps > 0 else _PTS_NUDGE_S
                self._seg_base_s = max(elapsed_s, self._last_pts_s + step_s)
        if item.index == 0 or item.pos_ms > 0:  # OpenCV reports 0 when there is no timestamp
            offset_s = (item.pos_ms - self._seg_first_pos_ms) / 1000.0
        elif fps > 0 and not self.live:
            offset_s = item.index / fps
        else:
            offset_s = (item.capture_ns - self._seg_first_capture_ns) / 1e9
        pts_s = self._seg_base_s + offset_s
        if self._last_pts_s is not None and pts_s <= self._last_pts_s:
            pts_s = self._last_pts_s + _PTS_NUDGE_S
        return pts_s

    def _fail(self, detail: str) -> None:
        self._failure = f"stream {self.id}: {detail}"
        self._set_state(StreamState.ERROR, detail, code=SourceError.code)
        self._wake()

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    # ------------------------------------------------------------------ reader thread

    def _post(self, loop: asyncio.AbstractEventLoop, item: _Event | _Decoded) -> bool:
        try:
            loop.call_soon_threadsafe(self._on_posted, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _open_capture(self) -> cv2.VideoCapture:
        kind = self.spec.kind
        if kind is SourceKind.WEBCAM:
            return cv2.VideoCapture(int(self.spec.options["index"]))
        if kind is SourceKind.FILE:
            return cv2.VideoCapture(self.spec.location, cv2.CAP_FFMPEG)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(self._open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self._read_timeout_s * 1000)]
        return cv2.VideoCapture(self.spec.location, cv2.CAP_FFMPEG, params)

    def _open_failure_detail(self) -> str:
        kind = self.spec.kind
        if kind is SourceKind.FILE:
            path = self.spec.location
            if not os.path.exists(path):
                return f"cannot open {path}: no such file"
            if not os.path.isfile(path):
                return f"cannot open {path}: not a file"
            return f"cannot open {path}: not a video OpenCV/FFmpeg can decode"
        if kind is SourceKind.WEBCAM:
            index = self.spec.options["index"]
            missing = sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{index}")
            return f"cannot open webcam {index}" + (f": no /dev/video{index}" if missing else "")
        return f"cannot open {self.safe_url} (unreachable, refused, or not a video stream)"

    def _read_loop(self, gen: int, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread of connection ``gen``: open, read until told to stop or failing."""
        cap: cv2.VideoCapture | None = None
        frames = 0
        try:
            cap = self._open_capture()
            if not cap.isOpened():
                self._post(loop, _Event(gen, _Kind.OPEN_FAILED, self._open_failure_detail()))
                return
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not self._post(loop, _Event(gen, _Kind.OPENED, fps=fps if 0 < fps < 1000 else 0.0)):
                return
            while self._generation == gen:
                if self._slots is not None:
                    self._slots.acquire()
                    if self._generation != gen:
                        return
                ok, bgr = cap.read()
                capture_ns = self._clock()
                if self._generation != gen:
                    return  # abandoned while blocked in read(): its result no longer matters
                if not ok or bgr is None:
                    if self.live:
                        detail = f"read from {self.safe_url} failed (stream closed or lost)"
                    elif frames:
                        detail = f"end of {self.safe_url}"
                    else:
                        detail = f"no frame could be decoded from {self.safe_url}"
                    self._post(loop, _Event(gen, _Kind.READ_FAILED, detail))
                    return
                pos_ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
                image = self._transform(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if not self._post(loop, _Decoded(gen, image, capture_ns, pos_ms, frames)):
                    return
                frames += 1
        except Exception as exc:  # boundary: report the reader's failure to the supervisor
            log.exception("stream %s: reader failed", self.id)
            self._post(loop, _Event(gen, _Kind.CRASHED, f"reader failed: {exc!r}"))
        finally:
            if cap is not None:
                cap.release()
