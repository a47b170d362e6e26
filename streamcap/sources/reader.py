"""What every decoding source shares: a reader thread per connection under a supervisor task.

:class:`ReaderSource` is the loop side of :class:`~streamcap.sources.pyav.PyAVSource` (files,
RTSP, HTTP) and :class:`~streamcap.sources.opencv.OpenCVSource` (webcams); a subclass only
implements :meth:`ReaderSource._read_loop`, the blocking part.

Threading contract
------------------
Each connection attempt runs one daemon *reader thread* (a :class:`ReaderThread`) that opens
the input, decodes, converts to RGB, applies ``frame_transform`` and posts results to the event
loop with ``call_soon_threadsafe``; nothing blocking ever runs on the loop. Connections are
numbered by a *generation* counter: abandoning a connection bumps the counter and sets the
thread's :attr:`ReaderThread.abort_io` flag, which a subclass's blocking calls check (PyAV's
interrupt callback does, so a hung open or read returns at once); posts from an old generation
are ignored. A *supervisor* task on the loop watches each connection: open outcome, read
failures, end of input and, for live sources, frame age (the watchdog), then decides to end,
fail or reconnect. :meth:`aclose` abandons the reader and waits (bounded) until its thread has
left the decoder, and an :mod:`atexit` hook (:func:`stop_readers_at_exit`) does the same for
readers nobody closed, so a process never exits with a thread inside FFmpeg.

Handoff
-------
Frames wait in a small bounded deque (``handoff_size``). Live sources drop the oldest frame when
it is full (reported as ``on_drop("handoff_full")``) so the consumer always gets recent frames;
files make the reader wait for room (nothing is lost). With ``audio=True`` audio chunks wait in
the same deque, in arrival order, bounded by their own count (``audio_handoff_size``, 40 chunks:
2 s): live, the oldest chunk is dropped when full (``on_drop("audio_full")``); files wait.

Timestamps
----------
``seq`` counts frames of the stream, across reconnects (a gap means a frame was dropped).
``capture_ns`` is the injected clock when the frame was decoded. ``pts_s`` is media time from
the pure :class:`~streamcap.core.mediaclock.MediaClock`, fed the container's time of each frame
(or None) and its capture time: strictly increasing, never jumping further than what was
received, each connection of a live stream a new segment. Every discontinuity it reports
(``pts_jump``, ``pts_rewind``) goes out through ``on_drop`` and is counted.

Audio time
----------
A subclass posts :class:`DecodedAudio` (16 kHz mono, container time) beside :class:`Decoded`.
Audio shares the video's media clock: each placed frame records ``media - container`` time, and
an audio chunk's media start is its container time plus that offset, so a sound and a picture
the container puts at the same time get the same ``pts_s`` (across re-based segments too). The
reader holds a connection's audio back until its first frame is posted (a decoder may delay its
first picture), so the offset is known; audio placed before media 0 or overlapping the previous
chunk is cut (:class:`~streamcap.sources.audio.AudioTimeline`). A stream whose audio time strays
more than :data:`AUDIO_MAX_SKEW_S` from its pictures' time continues its audio at the pictures'
time instead. A stream without video (audio only, ``audio=True``) drives the
:class:`~streamcap.core.mediaclock.MediaClock` with its audio chunks, so the same rules (start at
0, jumps and rewinds re-based and counted, live reconnects keeping pace) apply; its audio also
feeds the watchdog and the LIVE status as frames do. In a stream with video the watchdog watches
the pictures only, as without audio.

Live failure handling
---------------------
A connection that fails to open, fails a read or reaches the end of its input (a server that
closes) ends → status RECONNECTING (``end_on_eof=True``, as ``streamcap caption`` asks, makes
the end of a live stream its ENDED instead). A server that stops sending without closing is
caught by the watchdog: when no frame arrived for ``stall_timeout_s`` it reports STALLED,
abandons the reader and reconnects (RECONNECTING). Reconnects wait a capped, jittered exponential
backoff; the first new frame makes the stream LIVE again. ``max_failures`` consecutive
connections without a frame give up with ERROR (None: retry forever).
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from collections.abc import Callable
from typing import Any

import numpy as np

from streamcap.core.errors import SourceEnded, SourceError
from streamcap.core.mediaclock import MediaClock
from streamcap.core.types import AUDIO_RATE, AudioChunk, DropReason, Frame, StreamState
from streamcap.sources.audio import CHUNK_SAMPLES, AudioTimeline
from streamcap.sources.backoff import Backoff
from streamcap.sources.base import Source
from streamcap.sources.url import SourceKind, SourceSpec, sanitize_url

log = logging.getLogger(__name__)

_OPEN_GRACE_S = 2.0  # the watchdog gives the decoder's own open timeout this much slack
_EXIT_GRACE_S = 2.0  # aclose waits this long past the read timeout for the reader to leave
_EXIT_JOIN_S = 2.0  # at interpreter exit, readers still running get this long (all together)
#: audio whose media time strays this far from the newest picture's continues at the picture's
AUDIO_MAX_SKEW_S = 5.0


class Kind(str, Enum):
    """What a reader (or the watchdog) says about its connection."""

    OPENED = "opened"
    OPEN_FAILED = "open_failed"
    READ_FAILED = "read_failed"  # a read failed (for files after frames: treated as the end)
    END = "end"  # the input ended cleanly (end of file; a live server closed the stream)
    CRASHED = "crashed"  # an unexpected error in the reader (e.g. frame_transform raised)
    STALLED = "stalled"  # the watchdog's verdict: no frame for stall_timeout_s


@dataclass(frozen=True, slots=True)
class Event:
    gen: int
    kind: Kind
    detail: str = ""
    fps: float = 0.0
    has_video: bool = True  # OPENED: whether the connection has pictures (False: audio only)


@dataclass(frozen=True, slots=True)
class Decoded:
    gen: int
    image: np.ndarray
    capture_ns: int
    pts_s: float | None  # the container's presentation time (seconds), None when it has none


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """Decoded audio: 16 kHz mono float32 samples, the first at container time ``pts_s``."""

    gen: int
    samples: np.ndarray
    capture_ns: int
    pts_s: float | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """The reader lost frames before they became frames (e.g. a packet it could not decode)."""

    gen: int
    reason: str
    detail: str = ""


class ReaderThread(threading.Thread):
    """A reader's thread. :attr:`abort_io` is set when its connection is abandoned; blocking I/O
    done on this thread checks it (see :mod:`streamcap.sources.pyav`). :attr:`wake` (set by the
    source) releases a reader waiting for room in a file's handoff."""

    abort_io: bool = False
    wake: Callable[[], None] | None = None

    def run(self) -> None:
        _running.add(self)
        try:
            super().run()
        finally:
            _running.discard(self)


_running: set[ReaderThread] = set()  # reader threads alive now (set operations are atomic)
_exit_hook = threading.Lock()
_exit_hook_registered = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _exit_hook:
        if not _exit_hook_registered:
            atexit.register(stop_readers_at_exit)
            _exit_hook_registered = True


def stop_readers_at_exit(timeout_s: float = _EXIT_JOIN_S) -> int:
    """Abort every reader thread still running and wait (up to ``timeout_s`` in all) until they
    have left their decoders; returns how many are still running. Registered with :mod:`atexit`
    once a reader has started: the interpreter then never finalises with a thread inside FFmpeg
    (a daemon thread that wakes up there after finalisation can crash the process), even when a
    source was never closed."""
    threads = list(_running)
    for thread in threads:
        thread.abort_io = True
        if thread.wake is not None:
            thread.wake()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in threads)


class ReaderSource(Source, abc.ABC):
    """The loop side of a decoding source; see the module docstring for the contract.

    Tuning (all optional): ``stall_timeout_s`` (live watchdog), ``open_timeout_s`` and
    ``read_timeout_s`` (given to the decoder), ``backoff`` and ``rng`` (reconnect delays),
    ``handoff_size``, ``max_failures`` (consecutive failed connections before giving up with
    ERROR; None retries forever; ``"auto"``: the subclass's default), ``end_on_eof`` (a live
    stream whose server ends it is ENDED instead of reconnected), ``audio_handoff_size`` (audio
    chunks waiting, with ``audio=True``).
    """

    #: the source kinds a subclass reads
    kinds: frozenset[SourceKind] = frozenset()
    #: ``max_failures="auto"``: this many for this kind of source (None: forever)
    default_max_failures: int | None = None

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
        max_failures: int | None | str = "auto",
        end_on_eof: bool = False,
        audio_handoff_size: int = 40,
        **hooks: Any,
    ) -> None:
        if spec.kind not in self.kinds:
            raise ValueError(f"{type(self).__name__} does not read {spec.kind.value} sources")
        super().__init__(stream_id, live=spec.live, **hooks)
        if stall_timeout_s <= 0 or open_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if handoff_size < 1 or audio_handoff_size < 1:
            raise ValueError("handoff_size and audio_handoff_size must be >= 1")
        self.spec = spec
        self.safe_url = sanitize_url(spec.location)
        self._stall_timeout_s = stall_timeout_s
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._backoff = backoff if backoff is not None else Backoff()
        self._rng = rng if rng is not None else random.Random()
        self._handoff_size = handoff_size
        self._max_failures = self.default_max_failures if max_failures == "auto" else max_failures
        self._end_on_eof = end_on_eof

        self._frames: deque[Frame | AudioChunk] = deque()  # frames and audio, in arrival order
        self._queued_audio = 0  # audio chunks in _frames
        self._audio_handoff_size = audio_handoff_size
        # files: the reader takes a slot per frame and the consumer gives it back (BLOCK policy)
        self._slots = None if self.live else threading.Semaphore(handoff_size)
        self._audio_slots = (None if self.live or not self.audio
                             else threading.Semaphore(audio_handoff_size))
        self._ready: asyncio.Event | None = None
        self._events: asyncio.Queue[Event] | None = None
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self._thread: ReaderThread | None = None
        self._thread_exited: asyncio.Event | None = None
        self._closed = False
        self._ended = False
        self._failure: str | None = None

        self._media_clock = MediaClock(live=self.live)
        self._seq = 0
        self._failures = 0  # consecutive connections that delivered no frame
        self._frames_ever = 0
        self._last_frame_at = 0.0  # loop time of the newest accepted frame
        self._nominal_fps = 0.0
        self._seg_frames = 0
        self._connect_started_at = 0.0
        # audio (see "Audio time" in the module docstring)
        self._has_video = True  # the current connection's OPENED said so
        self._audio_offset: float | None = None  # media - container time of the newest frame
        self._last_video_s: float | None = None  # media time of the newest frame
        self._audio_timeline = AudioTimeline()
        self._audio_seq = 0

    # ------------------------------------------------------------------ public API

    @property
    def media_clock(self) -> MediaClock:
        return self._media_clock

    async def recv(self) -> Frame | AudioChunk:
        if self._closed:
            raise SourceEnded(f"stream {self.id} is closed")
        self._ensure_started()
        assert self._ready is not None
        while True:
            if self._frames:
                item = self._frames.popleft()
                if isinstance(item, AudioChunk):
                    self._queued_audio -= 1
                    if self._audio_slots is not None:
                        self._audio_slots.release()
                elif self._slots is not None:
                    self._slots.release()
                return item
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
        self._abandon()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        await self._wait_reader_exit()
        self._frames.clear()
        self._queued_audio = 0
        if self._state not in (None, StreamState.ENDED, StreamState.ERROR):
            self._set_state(StreamState.ENDED, "closed")
        if self._ready is not None:
            self._ready.set()

    # ------------------------------------------------------------------ for subclasses

    @abc.abstractmethod
    def _read_loop(self, gen: int, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread of connection ``gen``: open, post :class:`Event` (OPENED first) and
        :class:`Decoded` items with :meth:`_post`, stop as soon as :meth:`_abandoned` says so;
        end with one terminal event (OPEN_FAILED, READ_FAILED, END or CRASHED)."""

    def _abandoned(self, gen: int) -> bool:
        """Whether connection ``gen`` was given up (call on its reader thread)."""
        if self._generation != gen:
            return True
        thread = threading.current_thread()
        return isinstance(thread, ReaderThread) and thread.abort_io

    def _wait_for_room(self, gen: int, *, audio: bool = False) -> bool:
        """Files: block until the consumer has room (for a frame, or an audio chunk); False when
        the connection was abandoned."""
        slots = self._audio_slots if audio else self._slots
        if slots is not None:
            slots.acquire()
        return not self._abandoned(gen)

    def _post(self, loop: asyncio.AbstractEventLoop,
              item: Event | Decoded | DecodedAudio | Dropped) -> bool:
        try:
            loop.call_soon_threadsafe(self._on_posted, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

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

    def _abandon(self) -> None:
        """Abandon the current connection: its posts are ignored, its blocking I/O interrupted,
        a file reader waiting for room released."""
        self._generation += 1
        thread = self._thread
        if thread is not None:
            thread.abort_io = True
        self._release_slots()

    def _release_slots(self) -> None:
        """Unblock a file reader waiting for room (it then sees it was abandoned)."""
        if self._slots is not None:
            for _ in range(self._handoff_size + 1):
                self._slots.release()
        if self._audio_slots is not None:
            for _ in range(self._audio_handoff_size + 1):
                self._audio_slots.release()

    async def _wait_reader_exit(self) -> None:
        thread, exited = self._thread, self._thread_exited
        if thread is None or exited is None or not thread.is_alive():
            return
        limit_s = max(self._open_timeout_s, self._read_timeout_s) + _EXIT_GRACE_S
        try:
            async with asyncio.timeout(limit_s):
                await exited.wait()
                # the event is set in the thread's last lines: let it finish returning (a thread
                # seen alive after aclose on a loaded machine)
                if thread.is_alive():
                    await asyncio.to_thread(thread.join, _EXIT_GRACE_S)
        except TimeoutError:
            log.warning("stream %s: reader thread %s still busy %.1f s after close", self.id,
                        thread.name, limit_s)

    async def _run_connections(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gen = self._start_reader(loop)
            kind, detail = await self._watch(gen, loop)
            frames = self._seg_frames
            self._abandon()  # no-op for a reader that has exited
            if not self.live:
                if kind in (Kind.END, Kind.READ_FAILED) and frames > 0:
                    if kind is Kind.READ_FAILED:
                        log.warning("stream %s: %s; ending after %d frames", self.id, detail, frames)
                    self._ended = True  # recv() drains the handoff, then reports ENDED
                    self._wake()
                else:
                    self._fail(detail)
                return
            if kind is Kind.CRASHED:
                self._fail(detail)
                return
            if kind is Kind.END and self._end_on_eof and self._frames_ever > 0:
                log.info("stream %s: %s", self.id, detail)
                self._ended = True
                self._wake()
                return
            if frames == 0:
                self._failures += 1
            if self._max_failures is not None and self._failures >= self._max_failures:
                self._fail(f"{detail}; gave up after {self._failures} failed attempts")
                return
            if kind is Kind.STALLED and self._state is StreamState.LIVE:
                self._set_state(StreamState.STALLED, detail, code=SourceError.code)
            delay_s = self._backoff.delay_s(self._failures, self._rng)
            if not self._set_state(StreamState.RECONNECTING, detail, code=SourceError.code,
                                   retry_in_s=round(delay_s, 3)):
                log.debug("stream %s: still reconnecting (%s); retry in %.2f s", self.id, detail,
                          delay_s)
            await asyncio.sleep(delay_s)
            self._reconnecting()

    async def _watch(self, gen: int, loop: asyncio.AbstractEventLoop) -> tuple[Kind, str]:
        """Wait until connection ``gen`` is over; return why (kind and words)."""
        open_limit_s = self._open_timeout_s + _OPEN_GRACE_S
        event = await self._next_event(gen, open_limit_s)
        if event is None:
            return Kind.OPEN_FAILED, (f"opening {self.safe_url} timed out after "
                                      f"{open_limit_s:.1f} s")
        if event.kind is not Kind.OPENED:
            return event.kind, event.detail
        self._nominal_fps = event.fps
        # audio only: the clock steps one chunk at a time
        self._media_clock.set_fps(event.fps if event.has_video else AUDIO_RATE / CHUNK_SAMPLES)
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
                    return Kind.STALLED, f"no frame for {loop.time() - newest:.1f} s"
                event = await self._next_event(gen, remaining_s)
            if event is not None:
                return event.kind, event.detail

    async def _next_event(self, gen: int, timeout_s: float | None) -> Event | None:
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
        self._generation += 1
        gen = self._generation
        self._seg_frames = 0
        self._media_clock.new_segment()
        self._audio_offset = None
        self._connect_started_at = loop.time()
        exited = asyncio.Event()
        thread = ReaderThread(target=self._thread_main, args=(gen, loop, exited), daemon=True,
                              name=f"streamcap-source-{self.id}-{gen}")
        thread.wake = self._release_slots
        self._thread, self._thread_exited = thread, exited
        _register_exit_hook()
        thread.start()
        return gen

    def _thread_main(self, gen: int, loop: asyncio.AbstractEventLoop, exited: asyncio.Event) -> None:
        try:
            self._read_loop(gen, loop)
        finally:
            try:
                loop.call_soon_threadsafe(exited.set)
            except RuntimeError:  # the loop is closed
                pass

    def _on_posted(self, item: Event | Decoded | DecodedAudio | Dropped) -> None:
        """Runs on the loop: route what a reader posted, ignoring abandoned connections."""
        if item.gen != self._generation or self._closed:
            return
        if isinstance(item, Decoded):
            self._accept(item)
        elif isinstance(item, DecodedAudio):
            self._accept_audio(item)
        elif isinstance(item, Dropped):
            log.debug("stream %s: dropped (%s) %s", self.id, item.reason, item.detail)
            self._drop(item.reason)
        else:
            if item.kind is Kind.OPENED:
                self._has_video = item.has_video
            assert self._events is not None
            self._events.put_nowait(item)

    def _place(self, pts_s: float | None, capture_ns: int) -> float:
        """Media time from the clock for a frame (or, audio only, a chunk); reports jumps."""
        placed = self._media_clock.place(pts_s, capture_ns)
        if placed.discontinuity is not None:
            log.warning("stream %s: container time %s by %.3g s at media %.3f s; re-based (%s)",
                        self.id, "went back" if placed.claimed_step_s < 0 else "jumped",
                        placed.claimed_step_s, placed.media_s, placed.discontinuity.value)
            self._drop(placed.discontinuity.value)
        return placed.media_s

    def _accept(self, item: Decoded) -> None:
        media_s = self._place(item.pts_s, item.capture_ns)
        self._audio_offset = None if item.pts_s is None else media_s - item.pts_s
        self._last_video_s = media_s
        frame = Frame(self.id, self._seq, item.capture_ns, media_s, item.image)
        self._seq += 1
        self._counted_alive()
        if self.live and len(self._frames) - self._queued_audio >= self._handoff_size:
            self._remove_oldest(Frame)
            self._drop("handoff_full")
        self._frames.append(frame)
        self._went_live()

    def _accept_audio(self, item: DecodedAudio) -> None:
        if not self.audio:
            return
        if not self._has_video:  # audio only: the chunks drive the media clock
            start_s = self._place(item.pts_s, item.capture_ns)
        else:
            start_s = self._audio_start_s(item.pts_s)
            if start_s is None:
                return  # no picture placed yet: nothing to align with (the reader holds audio back)
        placed = self._audio_timeline.place(start_s, item.samples)
        if placed is None:
            return
        start_s, samples = placed
        chunk = AudioChunk(self.id, self._audio_seq, item.capture_ns, start_s, samples)
        self._audio_seq += 1
        if not self._has_video:
            self._counted_alive()
        if self.live and self._queued_audio >= self._audio_handoff_size:
            self._remove_oldest(AudioChunk)
            self._queued_audio -= 1
            self._drop(DropReason.AUDIO_FULL.value)
        self._frames.append(chunk)
        self._queued_audio += 1
        if not self._has_video:
            self._went_live()
        else:
            self._wake()

    def _audio_start_s(self, pts_s: float | None) -> float | None:
        """The media start of a chunk at container time ``pts_s`` in a stream with pictures."""
        newest = self._last_video_s
        if newest is None:
            return None
        end = self._audio_timeline.end_s
        if pts_s is None or self._audio_offset is None:  # nothing to map: continue the audio
            return newest if end is None else end
        start = pts_s + self._audio_offset
        if abs(start - newest) > AUDIO_MAX_SKEW_S:
            log.debug("stream %s: audio at %.3f s strays from the picture at %.3f s; continuing "
                      "it there", self.id, start, newest)
            start = newest if end is None else max(end, newest)
        return start

    def _remove_oldest(self, kind: type) -> None:
        for i, queued in enumerate(self._frames):
            if isinstance(queued, kind):
                del self._frames[i]
                return

    def _counted_alive(self) -> None:
        """A frame (or, audio only, a chunk) arrived: the connection works."""
        self._seg_frames += 1
        self._frames_ever += 1
        self._failures = 0
        self._last_frame_at = asyncio.get_running_loop().time()

    def _went_live(self) -> None:
        if self._state is not StreamState.LIVE:
            self._set_state(StreamState.LIVE, f"receiving {self.safe_url}", fps=self._nominal_fps)
        self._wake()

    def _fail(self, detail: str) -> None:
        self._failure = f"stream {self.id}: {detail}"
        self._set_state(StreamState.ERROR, detail, code=SourceError.code)
        self._wake()

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()
