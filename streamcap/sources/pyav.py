"""Files, RTSP(S) and HTTP(S) through PyAV (FFmpeg's libraries, no OpenCV, no process-wide lock).

:class:`PyAVSource` is a :class:`~streamcap.sources.reader.ReaderSource` (reader thread per
connection, supervisor on the loop, bounded handoff, statuses, backoff, media clock: read that
module's docstring for the contract); this module is its reader thread.

One demuxer
-----------
A connection opens the input once (``av.open``) and demuxes it: the first video stream and, with
``audio=True``, the best audio stream (``container.streams.best("audio")``; a still cover picture,
``attached_pic``, is then no video: a music file is sound), through the one
``demux``; :meth:`PyAVSource._route` hands each packet to its stream's handler. Audio is decoded,
resampled to 16 kHz mono float32 (:class:`~streamcap.sources.audio.Resampler`), cut into 50 ms
chunks (:class:`~streamcap.sources.audio.Chunker`) and posted with its container time, which the
loop side maps through the video's media clock (:mod:`streamcap.sources.reader`, "Audio time").
Until a connection's first picture is posted its audio is held back here (at most
:data:`AUDIO_LEAD_CHUNKS`; older chunks are dropped as ``audio_full``). With ``audio=True`` a
stream without video is read for its audio alone. Only frames that are kept are converted to RGB
(``frame.to_ndarray(format="rgb24")``); :meth:`PyAVSource._keep` is where sampling will decide,
and the stream's codec context (``skip_frame``) is at hand in the same place to skip decoding
of frames nobody wants.

Timeouts and interruption
-------------------------
``av.open(url, options=..., timeout=(open_timeout_s, read_timeout_s))``: PyAV installs an FFmpeg
interrupt callback that fails an open or a read taking longer than its limit. No lock is shared
between sources: any number of connections open or hang at once without blocking each other.
The callback measures time by calling ``time.monotonic()`` from ``av.container.core``'s module
namespace; :func:`install_interrupt_check` (run once, on first use, never at import) replaces
that name with a stand-in that returns the real time on every thread except an abandoned
reader's (:attr:`~streamcap.sources.reader.ReaderThread.abort_io`), for which it returns a time
far in the future. So abandoning a connection — a stall, a reconnect, :meth:`aclose` — makes its
blocking FFmpeg call return within FFmpeg's polling interval (~0.1 s), and a stopped server never
leaves a thread inside FFmpeg at exit. Should a PyAV release rename that module name, the
stand-in is not installed (a warning is logged) and an abandoned reader exits within its own
read timeout instead.

FFmpeg options
--------------
RTSP: over TCP (no UDP loss, works through NAT), probing cut to 0.1 s / 64 KiB (:data:`RTSP_OPTIONS`;
opening a loopback stream takes ~0.2 s). HTTP and files: FFmpeg's defaults.

Errors
------
Files get a distinct message per way of being unreadable (:func:`file_problem`): no such file,
empty file, not a media file (no container format recognised), truncated/corrupt (a container
was recognised but could not be read, or no frame could be decoded), no video stream (audio
only; with ``audio=True``: no video or audio stream). Messages never carry a URL's credentials (FFmpeg's own error texts name the URL, so only
their ``strerror`` part is used).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import av

from streamcap.core.types import DropReason
from streamcap.core.windowing import min_frame_gap_s
from streamcap.sources.audio import Chunker, Resampler
from streamcap.sources.reader import (
    Decoded,
    DecodedAudio,
    Dropped,
    Event,
    Kind,
    ReaderSource,
    ReaderThread,
)
from streamcap.sources.url import SourceKind

log = logging.getLogger(__name__)

#: demuxer options for RTSP(S): TCP transport, short probing
RTSP_OPTIONS: Mapping[str, str] = {"rtsp_transport": "tcp", "analyzeduration": "100000",
                                   "probesize": "65536"}
_FAR_S = 1e9  # what an abandoned reader's clock adds: any timeout has passed
#: audio chunks (50 ms) a connection holds back while waiting for its first picture (5 s)
AUDIO_LEAD_CHUNKS = 100

# --------------------------------------------------------------------------- interruption

_install_lock = threading.Lock()
_installed = False


class _AbortingTime:
    """Stands in for the ``time`` module inside ``av.container.core`` (see the module docstring):
    everything is the real module except ``monotonic()`` on an abandoned reader thread."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def monotonic(self) -> float:
        now = self._real.monotonic()
        thread = threading.current_thread()
        if isinstance(thread, ReaderThread) and thread.abort_io:
            return now + _FAR_S
        return now


def install_interrupt_check() -> bool:
    """Make PyAV's interrupt callback also stop abandoned readers; idempotent. Returns whether
    the check is in place."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        import av.container.core as core

        current = getattr(core, "time", None)
        if isinstance(current, _AbortingTime):
            _installed = True
        elif current is time:
            core.time = _AbortingTime(time)
            _installed = True
        else:
            log.warning("PyAV's container module has no 'time' to hook: abandoned readers exit "
                        "within their read timeout instead of at once")
        return _installed


# --------------------------------------------------------------------------- file problems

# first bytes of containers FFmpeg reads (offset, magic): a file that starts like one of them
# but cannot be opened is damaged, not "not a media file"
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/QuickTime"), (4, b"moov", "MP4/QuickTime"), (4, b"mdat", "MP4/QuickTime"),
    (4, b"free", "MP4/QuickTime"), (4, b"wide", "MP4/QuickTime"), (4, b"styp", "MP4/QuickTime"),
    (4, b"moof", "MP4/QuickTime"), (4, b"skip", "MP4/QuickTime"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"RIFF", "RIFF (AVI/WAV)"), (0, b"OggS", "Ogg"),
    (0, b"FLV", "FLV"), (0, b"\x00\x00\x01\xba", "MPEG-PS"), (0, b"\x00\x00\x01\xb3", "MPEG video"),
    (0, b"\x30\x26\xb2\x75", "ASF/WMV"),
)


def _recognised_container(head: bytes) -> str | None:
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if len(head) >= 377 and head[0] == head[188] == 0x47:  # MPEG-TS sync bytes
        return "MPEG-TS"
    return None


def file_problem(path: str) -> str | None:
    """Why ``path`` cannot even be tried as a video file (missing, not a file, empty), or None."""
    if not os.path.exists(path):
        return f"cannot open {path}: no such file"
    if not os.path.isfile(path):
        return f"cannot open {path}: not a file"
    if os.path.getsize(path) == 0:
        return f"cannot open {path}: empty file (0 bytes)"
    return None


def _unopenable_file_detail(path: str, exc: BaseException) -> str:
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as read_exc:
        return f"cannot open {path}: {read_exc.strerror or read_exc}"
    container = _recognised_container(head)
    if container is None:
        return f"cannot open {path}: not a media file (no container format recognised)"
    return (f"cannot open {path}: truncated/corrupt {container} file "
            f"({_ffmpeg_reason(exc)}; e.g. its index is missing)")


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's words for ``exc`` without the file name/URL it carries (credentials)."""
    text = getattr(exc, "strerror", None)
    return str(text) if text else type(exc).__name__


def probe_video(path: str, *, timeout_s: float = 10.0) -> str | None:
    """Blocking: None when ``path`` holds a video stream with at least one decodable frame, else
    a clear description of what is wrong (the same words the source's ERROR status uses)."""
    return probe_media(path, want_audio=False, timeout_s=timeout_s)


def probe_media(path: str, *, want_audio: bool, timeout_s: float = 10.0) -> str | None:
    """Blocking: None when ``path`` can be read as a source opened with ``audio=want_audio``
    would read it — a video stream with a decodable frame, or (``want_audio``) an audio stream
    with decodable sound when there is no video — else a clear description of what is wrong
    (the same words the source's ERROR status uses)."""
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        container = av.open(path, timeout=(timeout_s, timeout_s))
    except (av.FFmpegError, OSError) as exc:
        return _unopenable_file_detail(path, exc)
    try:
        stream = _picture(container, skip_cover=want_audio) or (_best_audio(container) if want_audio else None)
        if stream is None:
            return _no_video_detail(path, container, want_audio=want_audio)
        try:
            for packet in container.demux(stream):
                try:
                    if packet.decode():
                        return None
                except av.InvalidDataError:  # a bad packet: the source skips it too
                    continue
        except (av.FFmpegError, OSError) as exc:
            return f"cannot read {path}: truncated/corrupt: {_ffmpeg_reason(exc)}"
        what = "frame" if stream.type == "video" else "audio"
        return f"cannot read {path}: truncated/corrupt: no {what} could be decoded"
    finally:
        container.close()


def _picture(container: Any, *, skip_cover: bool) -> Any | None:
    """The video stream to read: the first one; with ``skip_cover`` (audio wanted) the first that
    is not a still cover picture (``attached_pic``: the album art of a music file, which is sound)."""
    for stream in container.streams.video:
        if not (skip_cover and stream.disposition & av.stream.Disposition.attached_pic):
            return stream
    return None


def _best_audio(container: Any) -> Any | None:
    if not container.streams.audio:
        return None
    return container.streams.best("audio") or container.streams.audio[0]


def _no_video_detail(what: str, container: Any, *, want_audio: bool = False) -> str:
    if want_audio:
        return f"cannot read {what}: no video or audio stream"
    if container.streams.audio:
        return f"cannot read {what}: no video stream (audio only)"
    return f"cannot read {what}: no video stream"


# --------------------------------------------------------------------------- the source


def rgb_size(width: int, height: int, min_side: int | None) -> dict:
    """``to_ndarray`` arguments for an RGB picture: the frame's own size, or, when its shorter
    side is at least twice ``min_side`` (a 1080p camera for a 416 px engine), scaled (area
    averaging) so that side is ``min_side``; even sizes. Smaller pictures keep their size: the
    engine's own resize then sees exactly what it did before (the describer's figures on
    vtest.avi, 768x576, are unchanged)."""
    out: dict = {"format": "rgb24"}
    short = min(width, height)
    if min_side is None or short < 2 * min_side:
        return out
    scale = min_side / short
    out.update(width=max(2, round(width * scale / 2) * 2), height=max(2, round(height * scale / 2) * 2),
               interpolation="AREA")
    return out


class FrameThinning:
    """Which decoded frames to keep at most ``max_fps`` a second of their own time (the
    processor's rule: a frame closer than ``1/max_fps - 1 ms`` to the last kept one is skipped).
    Per connection (``gen``): a reconnect starts afresh, as does a time that goes backwards."""

    def __init__(self, max_fps: float) -> None:
        self._min_gap_s = min_frame_gap_s(max_fps)
        self._gen: int | None = None
        self._last: float | None = None

    def keep(self, gen: int, time_s: float | None) -> bool:
        if gen != self._gen:
            self._gen, self._last = gen, None
        if time_s is None:
            return True
        if self._last is not None and 0 <= time_s - self._last < self._min_gap_s:
            return False
        self._last = time_s
        return True


class PyAVSource(ReaderSource):
    """A file, RTSP(S) or HTTP(S) source decoded by PyAV. See the module docstrings (this one and
    :mod:`streamcap.sources.reader`) for the contract."""

    kinds = frozenset({SourceKind.FILE, SourceKind.RTSP, SourceKind.HTTP})
    default_max_failures = None  # network streams retry forever; files fail at once anyway

    def __init__(self, stream_id: str, spec, *, max_fps: float | None = None, min_side: int | None = None,
                 **kwargs: Any) -> None:
        """``max_fps``: frames kept per second of media (``windows.max_ingest_fps``); the others
        are decoded but never converted to RGB or resized (the processor would skip them).
        ``min_side``: the engine's input size; a kept frame larger than that is scaled (aspect
        kept, shorter side ``min_side``) while FFmpeg converts it to RGB, in one step, so a
        1080p picture is never converted at full size only to be shrunk."""
        super().__init__(stream_id, spec, **kwargs)
        if max_fps is not None and not max_fps > 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps!r}")
        if min_side is not None and min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {min_side!r}")
        self._frame_thinning = FrameThinning(max_fps) if max_fps else None
        self._min_side = min_side

    def _start_reader(self, loop: asyncio.AbstractEventLoop) -> int:
        install_interrupt_check()  # on the loop thread, before the first reader runs
        return super()._start_reader(loop)

    # ------------------------------------------------------------------ reader thread

    def _keep(self, gen: int, frame: av.VideoFrame) -> bool:
        """Whether a decoded frame becomes a :class:`~streamcap.core.types.Frame` (converted to
        RGB and resized): at most ``max_fps`` frames per second of the stream's time, by the
        same rule as the processor's ingest sub-sampling, so only frames it keeps are converted
        (a 1080p30 camera: one frame in three). Frames without a time are kept."""
        thin = self._frame_thinning
        return thin is None or thin.keep(gen, frame.time)

    def _open(self) -> Any:
        options = dict(RTSP_OPTIONS) if self.spec.kind is SourceKind.RTSP else {}
        return av.open(self.spec.location, options=options,
                       timeout=(self._open_timeout_s, self._read_timeout_s))

    def _open_failure_detail(self, exc: BaseException, took_s: float) -> str:
        if self.spec.kind is SourceKind.FILE:
            return _unopenable_file_detail(self.spec.location, exc)
        if took_s >= self._open_timeout_s * 0.95:
            return f"opening {self.safe_url} timed out after {took_s:.1f} s"
        return (f"cannot open {self.safe_url} ({_ffmpeg_reason(exc)}: unreachable, refused, or "
                "not a video stream)")

    def _read_loop(self, gen: int, loop: asyncio.AbstractEventLoop) -> None:
        container = None
        what = self.spec.location if self.spec.kind is SourceKind.FILE else self.safe_url
        frames = 0
        try:
            if self.spec.kind is SourceKind.FILE:
                problem = file_problem(self.spec.location)
                if problem is not None:
                    self._post(loop, Event(gen, Kind.OPEN_FAILED, problem))
                    return
            started = time.monotonic()
            try:
                container = self._open()
            except (av.FFmpegError, OSError) as exc:
                if not self._abandoned(gen):
                    detail = self._open_failure_detail(exc, time.monotonic() - started)
                    self._post(loop, Event(gen, Kind.OPEN_FAILED, detail))
                return
            video = _picture(container, skip_cover=self.audio)
            sound = _best_audio(container) if self.audio else None
            if video is None and sound is None:
                self._post(loop, Event(gen, Kind.OPEN_FAILED,
                                       _no_video_detail(what, container, want_audio=self.audio)))
                return
            fps = 0.0
            if video is not None:
                rate = video.average_rate or video.guessed_rate
                fps = float(rate) if rate else 0.0
            if not self._post(loop, Event(gen, Kind.OPENED, fps=fps if 0 < fps < 1000 else 0.0,
                                          has_video=video is not None)):
                return
            audio = (_AudioState(sound, held=video is not None, clock=self._clock)
                     if sound is not None else None)
            streams = [s for s in (video, sound) if s is not None]
            try:
                # one demuxer for every stream we read; each packet goes to its stream's handler
                for packet in container.demux(*streams):
                    if self._abandoned(gen):
                        return
                    kept = self._route(gen, loop, packet, video, audio)
                    if kept is None:
                        return
                    frames += kept
                if audio is not None and not self._abandoned(gen):
                    kept = self._post_audio(gen, loop, audio, audio.flush())
                    if kept is None:
                        return
                    frames += kept if video is None else 0
            except (av.FFmpegError, OSError) as exc:
                if self._abandoned(gen):
                    return
                reason = _ffmpeg_reason(exc)
                if self.live:
                    detail = f"read from {self.safe_url} failed ({reason}: stream closed or lost)"
                elif frames:
                    detail = f"read from {what} failed after {frames} frames ({reason})"
                else:
                    detail = f"cannot read {what}: truncated/corrupt: {reason}"
                self._post(loop, Event(gen, Kind.READ_FAILED, detail))
                return
            if self._abandoned(gen):
                return
            if frames:
                ended = f"{self.safe_url} ended the stream" if self.live else f"end of {what}"
                self._post(loop, Event(gen, Kind.END, ended))
            elif self.live:
                self._post(loop, Event(gen, Kind.END, f"{self.safe_url} ended before any frame"))
            else:
                self._post(loop, Event(gen, Kind.READ_FAILED,
                                       f"cannot read {what}: truncated/corrupt: no frame could be "
                                       "decoded"))
        except Exception as exc:  # boundary: report the reader's failure to the supervisor
            log.exception("stream %s: reader failed", self.id)
            self._post(loop, Event(gen, Kind.CRASHED, f"reader failed: {type(exc).__name__}"))
        finally:
            if container is not None:
                container.close()

    def _route(self, gen: int, loop: asyncio.AbstractEventLoop, packet: av.Packet,
               video: av.VideoStream | None, audio: _AudioState | None = None) -> int | None:
        """Hand one demuxed packet to its stream's handler; returns the frames (audio only: the
        audio chunks) it kept, or None when the connection was abandoned meanwhile."""
        if video is not None and packet.stream is video:
            kept = self._on_video_packet(gen, loop, packet)
            if kept and audio is not None and audio.held:  # the first picture is out
                audio.held = False
                if self._post_audio(gen, loop, audio, audio.release()) is None:
                    return None
            return kept
        if audio is not None and packet.stream is audio.stream:
            kept = self._on_audio_packet(gen, loop, packet, audio)
            return kept if video is None or kept is None else 0
        return 0  # not asked for

    def _on_audio_packet(self, gen: int, loop: asyncio.AbstractEventLoop, packet: av.Packet,
                         audio: _AudioState) -> int | None:
        try:
            decoded = packet.decode()
        except av.InvalidDataError as exc:  # one bad packet: count it, go on with the next
            self._post(loop, Dropped(gen, "decode_error", f"audio: {_ffmpeg_reason(exc)}"))
            return 0
        chunks = []
        for frame in decoded:
            chunks += audio.add(frame)
        if audio.held:
            lost = audio.hold(chunks)
            for _ in range(lost):
                self._post(loop, Dropped(gen, DropReason.AUDIO_FULL.value,
                                         "audio waited too long for the first picture"))
            return 0
        return self._post_audio(gen, loop, audio, chunks)

    def _post_audio(self, gen: int, loop: asyncio.AbstractEventLoop, audio: _AudioState,
                    chunks: list[tuple[float | None, Any, int]]) -> int | None:
        """Post audio chunks (waiting for room, for files); returns how many, None when the
        connection was abandoned."""
        if audio.held:
            audio.hold(chunks)
            return 0
        for pts_s, samples, capture_ns in chunks:
            if not self._wait_for_room(gen, audio=True):
                return None
            if not self._post(loop, DecodedAudio(gen, samples, capture_ns, pts_s)):
                return None
        return len(chunks)

    def _on_video_packet(self, gen: int, loop: asyncio.AbstractEventLoop,
                         packet: av.Packet) -> int | None:
        try:
            decoded = packet.decode()
        except av.InvalidDataError as exc:  # one bad packet: count it, go on with the next
            self._post(loop, Dropped(gen, "decode_error", _ffmpeg_reason(exc)))
            return 0
        kept = 0
        for frame in decoded:
            if not self._keep(gen, frame):
                continue
            if not self._wait_for_room(gen):
                return None
            capture_ns = self._clock()
            image = self._transform(frame.to_ndarray(**rgb_size(frame.width, frame.height, self._min_side)))
            if not self._post(loop, Decoded(gen, image, capture_ns, frame.time)):
                return None
            kept += 1
        return kept


class _AudioState:
    """A connection's audio on the reader thread: resampler, chunker, and the chunks held back
    until the first picture is posted (``held``)."""

    def __init__(self, stream: Any, *, held: bool, clock: Any = time.monotonic_ns) -> None:
        self.stream = stream
        self.held = held
        self._clock = clock
        self._resampler = Resampler()
        self._chunker = Chunker()
        self._pending: list[tuple[float | None, Any, int]] = []

    def add(self, frame: Any) -> list[tuple[float | None, Any, int]]:
        """The complete chunks after one decoded frame: (container time, samples, capture_ns)."""
        out = []
        for t, samples in self._resampler.resample(frame):
            out += self._chunker.add(t, samples)
        now = self._clock()
        return [(t, samples, now) for t, samples in out]

    def flush(self) -> list[tuple[float | None, Any, int]]:
        out = []
        for t, samples in self._resampler.resample(None):
            out += self._chunker.add(t, samples)
        out += self._chunker.flush()
        now = self._clock()
        return [(t, samples, now) for t, samples in out]

    def hold(self, chunks: list) -> int:
        """Keep ``chunks`` until :meth:`release`; returns how many old ones were dropped."""
        self._pending += chunks
        lost = max(0, len(self._pending) - AUDIO_LEAD_CHUNKS)
        del self._pending[:lost]
        return lost

    def release(self) -> list[tuple[float | None, Any, int]]:
        pending, self._pending = self._pending, []
        return pending


__all__ = ["AUDIO_LEAD_CHUNKS", "RTSP_OPTIONS", "PyAVSource", "file_problem", "install_interrupt_check",
           "probe_media", "probe_video"]
