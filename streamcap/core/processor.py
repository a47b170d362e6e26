"""The per-stream core: frames and engine results in, windows and events out. Pure (it only logs).

One :class:`StreamProcessor` per stream owns every per-stream rule: ingest sub-sampling, the
frame ring, one window planner per caption track, one picture-statistics step per kept frame
(scene cuts for the stabiliser, black/frozen pictures for health), the stabilisers, caption
alerts, the health monitor, the live-WebVTT segmenters, the finals history and the stream's
status (:class:`~streamcap.core.status.StreamStatus`, the only record of it).

It has no clock, no asyncio and no I/O (python-websockets' sans-I/O protocol, whisper_streaming's
processor): the caller passes monotonic ``now_ns`` with every call, so the same processor runs
live, over a file, or replayed on simulated time (:mod:`streamcap.runtime.replay`)::

    windows = p.feed_frame(frame, now_ns)    # windows due now, one list for every track
    events = p.take_events()                 # drops, health alerts, caused by that frame
    events = p.feed_result(window, result, now_ns)   # captions, caption alerts, progress
    events = p.tick(now_ns)                  # time limits (a stall is the absence of frames)
    events = p.finish(now_ns)                # a finite source ended and its windows are done

Every window handed out must come back exactly once, through :meth:`StreamProcessor.feed_result`
or :meth:`StreamProcessor.window_dropped`; :attr:`StreamProcessor.windows_in_flight` counts
those still out (a file's stream finishes once it is 0).

**Tracks.** A stream carries one or more caption tracks (:class:`TrackSettings`), each with its
own engine, window/stride, stabiliser and decoding settings. A ``video`` track watches the
picture (``input="video"``: window planner + :class:`CaptionStabilizer`); a ``speech`` track
hears the audio (``input="audio"``: :class:`~streamcap.core.speech.SpeechPolicy`, fed by
:meth:`StreamProcessor.feed_audio` with the VAD's speech probability of each chunk). Windows and
captions carry their track; ``seq`` is shared by the tracks of a stream, so it stays strictly
increasing per stream. Audio and frames share the stream's media clock.

A speech window's result is a :class:`~streamcap.core.types.Transcript`; the next speech window
is planned by the next :meth:`feed_audio` (or, once the source ended, :meth:`flush_speech`).

Not thread-safe: one owner (the stream's task) calls every method.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from streamcap.alerts.health import HealthLimits, HealthMonitor
from streamcap.alerts.rules import CaptionAlerts, Rule, Similarity
from streamcap.core.errors import ConfigError
from streamcap.core.events import AlertEvent, CaptionEvent, DropEvent, Event, ProgressEvent, StatusEvent
from streamcap.core.picture import PictureWatcher
from streamcap.core.ringbuffer import FrameRing
from streamcap.core.speech import SpeechPolicy, SpeechSettings
from streamcap.core.stabilizer import CaptionStabilizer
from streamcap.core.status import StreamStatus
from streamcap.core.types import (
    BEHIND_REASONS,
    VIDEO_TRACK,
    AudioChunk,
    Caption,
    CaptionResult,
    CaptionState,
    DropPolicy,
    DropReason,
    Frame,
    SceneObject,
    StreamState,
    Transcript,
    Window,
)
from streamcap.core.windowing import (MAX_MEDIA_S, WindowPlanner, build_window, min_frame_gap_s, min_ring_capacity,
                                     pick_frames)
from streamcap.outputs.livevtt import LiveVttSegmenter
from streamcap.outputs.subtitles import SubtitleRules

_NS = 1_000_000_000
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StabilizerSettings:
    agree: int
    fresh_agree: int | None  # None: no cut-aware agreement
    min_score: float = -math.inf  # -inf: every non-empty result counts
    refresh_s: float | None = None  # a final agreed by key, not text, is renewed after this long


@dataclass(frozen=True, slots=True)
class LiveVttSettings:
    segment_s: float
    window_segments: int
    rules: SubtitleRules
    settle_s: float  # how far behind the newest window a segment is completed


@dataclass(frozen=True, slots=True)
class TrackSettings:
    """One caption track of a stream."""

    name: str
    window_s: float
    stride_s: float
    frames_per_window: int
    stabilizer: StabilizerSettings
    engine: str = "default"  # which engine captions it (a key of the pipeline's engines)
    input: str = "video"  # what its windows hold: "video" frames or "audio"
    decoding: tuple[tuple[str, object], ...] = ()  # per-track decoding overrides
    live_vtt: LiveVttSettings | None = None
    speech: SpeechSettings | None = None  # input="audio": the streaming recogniser's policy
    sampling: str = "span"  # where a window's frames fall (streamcap.core.windowing.SAMPLINGS)

    def __post_init__(self) -> None:
        if self.input not in ("video", "audio"):
            raise ConfigError(f"track {self.name}: input must be video or audio, not {self.input!r}")
        if (self.input == "audio") != (self.speech is not None):
            raise ConfigError(f"track {self.name}: an audio track needs speech settings (and only it)")


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    """Everything a :class:`StreamProcessor` needs, built from the config (the only source of
    defaults) by :func:`streamcap.runtime.settings.processor_settings`."""

    stream: str
    live: bool
    frame_shape: tuple[int, int, int]
    ring_capacity: int
    max_ingest_fps: float
    max_backlog: int | None  # live streams: most overdue windows at once; files: None
    cut_diff: float
    tracks: tuple[TrackSettings, ...]
    health: HealthLimits | None = None  # None: no health alerts (jobs, tests)
    finals_history: int = 0
    collect_finals: bool = False  # keep every closed final (jobs: the whole clip's captions)


@dataclass(slots=True)
class StreamCounters:
    """What /healthz shows of a stream besides its status."""

    frames_in: int = 0
    windows_captioned: int = 0
    last_frame_ns: int | None = None
    last_caption_ns: int | None = None
    last_final: str | None = None
    media_s: float | None = None  # pts of the newest frame
    last_window_end_s: float | None = None
    audio_s: float | None = None  # media time the newest audio ends at
    last_audio_ns: int | None = None


@dataclass(slots=True)
class _Track:
    settings: TrackSettings
    planner: WindowPlanner
    stabilizer: CaptionStabilizer
    alerts: CaptionAlerts | None
    live_vtt: LiveVttSegmenter | None
    history: deque[Caption]
    finals: list[Caption] = field(default_factory=list)
    seen: tuple[float, tuple[SceneObject, ...]] | None = None  # newest window's end and its objects


@dataclass(slots=True)
class _SpeechTrack:
    settings: TrackSettings
    policy: SpeechPolicy
    alerts: CaptionAlerts | None
    live_vtt: LiveVttSegmenter | None
    history: deque[Caption]
    finals: list[Caption] = field(default_factory=list)
    last_final: Caption | None = None


class StreamProcessor:
    """One stream's rules; see the module docstring for the contract."""

    def __init__(self, settings: ProcessorSettings, *, rules: Sequence[Rule] = (),
                 similarity: Similarity | None = None,
                 make_alert_id: Callable[[], str] | None = None, seq: Iterator[int] | None = None) -> None:
        if not settings.tracks:
            raise ConfigError(f"stream {settings.stream}: no caption track")
        names = [t.name for t in settings.tracks]
        if len(set(names)) != len(names):
            raise ConfigError(f"stream {settings.stream}: duplicate track names {names}")
        self.settings = settings
        self.stream = settings.stream
        ids = itertools.count(1)
        self._make_alert_id = make_alert_id or (lambda: f"{settings.stream}-{next(ids)}")
        video_tracks = [t for t in settings.tracks if t.input == "video"]
        longest = max((t.window_s + t.stride_s for t in video_tracks), default=0.0)
        need = min_ring_capacity(longest, settings.max_ingest_fps) + 2 if video_tracks else 0
        if settings.ring_capacity < need:
            raise ConfigError(f"pipeline.ring_capacity={settings.ring_capacity} cannot hold a "
                              f"{longest - min(t.stride_s for t in video_tracks):g}s window at "
                              f"{settings.max_ingest_fps:g} fps (needs {need})")
        policy = DropPolicy.DROP_OLDEST if settings.live else DropPolicy.BLOCK
        self.ring = FrameRing(settings.ring_capacity, settings.frame_shape, policy)
        self.picture = PictureWatcher(settings.cut_diff)
        self.status = StreamStatus(settings.stream)
        self.counters = StreamCounters()
        self.monitor = (HealthMonitor(settings.stream, settings.health, self._make_alert_id)
                        if settings.health is not None else None)
        # the stream's caption numbers, shared by its tracks (the runtime may pass numbers that
        # continue a previous run's)
        seq = seq if seq is not None else itertools.count()
        self._tracks: dict[str, _Track] = {}
        self._speech: dict[str, _SpeechTrack] = {}
        for t in settings.tracks:
            if t.input == "audio":
                assert t.speech is not None
                self._speech[t.name] = _SpeechTrack(
                    settings=t, policy=SpeechPolicy(settings.stream, t.speech, live=settings.live, seq=seq,
                                                    track=t.name),
                    alerts=CaptionAlerts(list(rules), self._make_alert_id, similarity) if rules else None,
                    live_vtt=(LiveVttSegmenter(t.live_vtt.segment_s, t.live_vtt.window_segments, t.live_vtt.rules)
                              if t.live_vtt is not None else None),
                    history=deque(maxlen=settings.finals_history))
                continue
            st = t.stabilizer
            self._tracks[t.name] = _Track(
                settings=t,
                planner=WindowPlanner(t.window_s, t.stride_s, t.frames_per_window,
                                      max_backlog=settings.max_backlog if settings.live else None,
                                      sampling=t.sampling),
                stabilizer=CaptionStabilizer(settings.stream, st.agree, min_score=st.min_score,
                                             fresh_agree=st.fresh_agree, track=t.name, seq=seq,
                                             refresh_s=st.refresh_s),
                alerts=CaptionAlerts(list(rules), self._make_alert_id, similarity) if rules else None,
                live_vtt=(LiveVttSegmenter(t.live_vtt.segment_s, t.live_vtt.window_segments, t.live_vtt.rules)
                          if t.live_vtt is not None else None),
                history=deque(maxlen=settings.finals_history),
            )
        self._min_gap_s = min_frame_gap_s(settings.max_ingest_fps)
        self._last_kept_pts: float | None = None
        self._in_flight = 0
        self._events: list[Event] = []

    def carry_over(self, final: Caption) -> None:
        """Continue after ``final``, the last final an earlier run of this stream published
        (its track's stabiliser does not publish the same words again; see
        :meth:`CaptionStabilizer.carry_over`). A final of a track this stream lacks is ignored."""
        t = self._tracks.get(final.track)
        if t is not None:
            t.stabilizer.carry_over(final)

    def restore_history(self, finals: Iterable[Caption]) -> None:
        """Finals this stream published before a restart (oldest first), kept as its history so
        its chapters go on; each goes to its track (unknown tracks are ignored)."""
        for c in finals:
            t = self._tracks.get(c.track) or self._speech.get(c.track)
            if t is not None:
                t.history.append(c)

    # ------------------------------------------------------------------ reading

    @property
    def tracks(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.settings.tracks)

    @property
    def hears(self) -> bool:
        """Whether a track of this stream listens to its audio."""
        return bool(self._speech)

    @property
    def sees(self) -> bool:
        """Whether a track of this stream watches its picture."""
        return bool(self._tracks)

    def track(self, name: str = VIDEO_TRACK) -> TrackSettings:
        t = self._tracks.get(name) or self._speech.get(name)
        if t is None:
            raise KeyError(name)
        return t.settings

    @property
    def state(self) -> StreamState:
        return self.status.state

    @property
    def windows_in_flight(self) -> int:
        return self._in_flight

    def current_final(self, track: str = VIDEO_TRACK) -> Caption | None:
        if track in self._speech:
            return None  # speech finals are closed as they are made
        t = self._tracks.get(track)
        return None if t is None else t.stabilizer.current_final

    def history(self, track: str = VIDEO_TRACK) -> list[Caption]:
        """Closed finals kept for chapters (the latest ``finals_history``), oldest first."""
        t = self._tracks.get(track) or self._speech.get(track)
        return [] if t is None else list(t.history)

    def finals(self, track: str | None = VIDEO_TRACK) -> list[Caption]:
        """Every closed final (only with ``collect_finals``), oldest first; ``None``: every
        track's, by start time."""
        if track is None:
            every = [c for t in (*self._tracks.values(), *self._speech.values()) for c in t.finals]
            return sorted(every, key=lambda c: (c.start_s, c.seq))
        t = self._tracks.get(track) or self._speech.get(track)
        return [] if t is None else list(t.finals)

    def latest_frame(self) -> Frame | None:
        """The newest frame the ring holds (the stream's picture now), or None."""
        pts = self.ring.latest_pts_s
        return None if pts is None else self.ring.nearest(pts)

    def latest_objects(self, track: str = VIDEO_TRACK) -> tuple[float, tuple[SceneObject, ...]] | None:
        """The newest captioned window's end (media s) and the objects it counted, or None."""
        t = self._tracks.get(track)
        return None if t is None else t.seen

    def live_vtt(self, track: str = VIDEO_TRACK) -> LiveVttSegmenter | None:
        t = self._tracks.get(track) or self._speech.get(track)
        return None if t is None else t.live_vtt

    @property
    def speech_in_flight(self) -> bool:
        return any(t.policy.in_flight for t in self._speech.values())

    def audio_room_s(self) -> float:
        """Audio the speech buffers can take before one drops (live) or must wait (files)."""
        return min((t.policy.room_s() for t in self._speech.values()), default=math.inf)

    def take_events(self) -> list[Event]:
        """Events caused since the last call (by :meth:`feed_frame` and friends)."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ status & drops

    def feed_status(self, state: StreamState, detail: str = "", code: str | None = None, *,
                    now_ns: int, extra: dict | None = None) -> list[Event]:
        """A source reported a status; illegal or repeated changes are ignored."""
        self._set_status(state, detail, code, now_ns, extra)
        return self.take_events()

    def feed_drop(self, reason: DropReason | str, now_ns: int, *, unit: str = "frame",
                  count: int = 1, track: str = VIDEO_TRACK) -> list[Event]:
        """Something outside the processor dropped ``count`` frames (a source's handoff or
        ingest queue) or windows (the engine queue) of this stream."""
        self._drop(DropReason(reason), now_ns, unit=unit, count=count, track=track)
        return self.take_events()

    def window_dropped(self, window: Window, reason: DropReason | str, now_ns: int) -> list[Event]:
        """A window handed out by :meth:`feed_frame` will never get a result."""
        self._in_flight = max(0, self._in_flight - 1)
        sp = self._speech.get(window.track)
        if sp is not None:
            sp.policy.dropped(window)
        self._drop(DropReason(reason), now_ns, unit="window", count=1, track=window.track)
        return self.take_events()

    def fail(self, detail: str, code: str, now_ns: int) -> list[Event]:
        """The stream failed for good (ERROR); its open alerts end."""
        self._set_status(StreamState.ERROR, detail, code, now_ns)
        return self.take_events()

    def close(self, detail: str, code: str, now_ns: int) -> list[Event]:
        """The stream is going away (removed): publish a last ENDED status, end open alerts."""
        status = self.status.change(StreamState.ENDED, detail, code, force=True)
        if status is not None:
            self._events.append(StatusEvent(status))
        self._close_alerts()
        return self.take_events()

    def _set_status(self, state: StreamState, detail: str, code: str | None, now_ns: int,
                    extra: dict | None = None) -> None:
        status = self.status.change(state, detail, code, extra)
        if status is None:
            return
        self._events.append(StatusEvent(status))
        if self.monitor is not None:
            if state is StreamState.RECONNECTING:
                self._alerts(self.monitor.reconnect(now_ns))
            self._alerts(self.monitor.status(state, now_ns))
        if self.status.terminal:
            # a source that ends (a file read to its end) may still have windows out: their results
            # can still start, update or end caption alerts, which close in finish() (ERROR and
            # removal close them at once: no result is coming)
            self._close_alerts(captions=state is not StreamState.ENDED or self._in_flight == 0)

    def _drop(self, reason: DropReason, now_ns: int, *, unit: str, count: int, track: str = VIDEO_TRACK) -> None:
        if count <= 0:
            return
        self._events.append(DropEvent(self.stream, unit, reason, count, track))
        if self.monitor is not None and reason in BEHIND_REASONS:
            self._alerts(self.monitor.drop(now_ns, count))

    def _alerts(self, alerts: list) -> None:
        self._events.extend(AlertEvent(a) for a in alerts)

    def _close_alerts(self, captions: bool = True) -> None:
        if self.monitor is not None:
            self._alerts(self.monitor.close())
        if not captions:
            return
        at = self.counters.media_s or 0.0
        for t in (*self._tracks.values(), *self._speech.values()):
            if t.alerts is not None:
                self._alerts(t.alerts.close(self.stream, at))

    # ------------------------------------------------------------------ frames

    def feed_frame(self, frame: Frame, now_ns: int) -> list[Window]:
        """One decoded frame (RGB, already ``frame_shape``). Returns the windows due now; the
        events it caused wait in :meth:`take_events`. Raises ConfigError when a file's ring is
        too small to make progress."""
        c = self.counters
        c.frames_in += 1
        c.last_frame_ns = frame.capture_ns
        if not (math.isfinite(frame.pts_s) and abs(frame.pts_s) <= MAX_MEDIA_S):
            self._drop(DropReason.BAD_PTS, now_ns, unit="frame", count=1)
            return []
        c.media_s = frame.pts_s
        if self._last_kept_pts is not None and frame.pts_s - self._last_kept_pts < self._min_gap_s:
            return []  # ingest sub-sampling: not a drop, the windows never need that many frames
        if frame.image.shape != self.settings.frame_shape:
            raise ValueError(f"stream {self.stream}: frame {frame.image.shape} is not "
                             f"{self.settings.frame_shape} (resize before feeding)")
        res = self.ring.push(frame)
        if res.dropped and res.reason:
            self._drop(DropReason(res.reason), now_ns, unit="frame", count=1)
        if not res.stored:
            if self.ring.is_full and not self.settings.live:
                raise ConfigError("ring buffer full in blocking mode (ring_capacity too small)")
            return []
        self._last_kept_pts = frame.pts_s
        stats = self.picture.observe(frame.image, frame.pts_s)
        if self.monitor is not None:
            self._alerts(self.monitor.frame(frame.capture_ns, frame.pts_s, stats.luma_mean, stats.luma_std,
                                            stats.change))
        windows: list[Window] = []
        release = math.inf
        for t in self._tracks.values():
            planner = t.planner
            for spec in planner.due(frame.pts_s):
                frames = pick_frames(self.ring, planner.sample_targets(spec))
                windows.append(build_window(self.stream, spec, frames, t.settings.name))
            if planner.last_gap_skipped:
                self._drop(DropReason.MEDIA_GAP, now_ns, unit="window", count=planner.last_gap_skipped,
                           track=t.settings.name)
            if planner.last_skipped:
                self._drop(DropReason.BEHIND_LIVE, now_ns, unit="window", count=planner.last_skipped,
                           track=t.settings.name)
            release = min(release, planner.release_pts())
        self.ring.release_before(release)
        self._in_flight += len(windows)
        return windows

    # ------------------------------------------------------------------ audio

    def feed_audio(self, chunk: AudioChunk, speech_prob: float, now_ns: int) -> list[Window]:
        """One decoded audio chunk (16 kHz mono) with the VAD's speech probability over it.
        Returns the speech windows due now (at most one per speech track)."""
        if not self._speech:
            return []
        c = self.counters
        c.last_frame_ns = chunk.capture_ns  # audio is life too: an audio-only stream is not stalled
        c.last_audio_ns = chunk.capture_ns
        if not (math.isfinite(chunk.pts_s) and abs(chunk.pts_s) <= MAX_MEDIA_S):
            self._drop(DropReason.BAD_PTS, now_ns, unit="frame", count=1)
            return []
        c.audio_s = chunk.end_s
        if c.frames_in == 0:
            c.media_s = chunk.end_s
        if self.monitor is not None and c.frames_in == 0:  # no picture (yet): audio keeps it alive
            self._alerts(self.monitor.audio(chunk.capture_ns))
        windows: list[Window] = []
        for t in self._speech.values():
            before = t.policy.dropped_s
            w = t.policy.feed(chunk, speech_prob)
            lost_ms = int(round((t.policy.dropped_s - before) * 1000))
            if lost_ms:
                self._drop(DropReason.SPEECH_OVERFLOW, now_ns, unit="audio_ms", count=lost_ms, track=t.settings.name)
            if w is not None:
                windows.append(w)
        self._in_flight += len(windows)
        return windows

    def plan_speech(self) -> list[Window]:
        """Speech windows due now without new audio (call after a speech result: audio that came
        while a window was out may already make the next one due)."""
        windows = [w for t in self._speech.values() if (w := t.policy.plan()) is not None]
        self._in_flight += len(windows)
        return windows

    def audio_silent_for(self, now_ns: int) -> float:
        """Seconds since the last audio chunk came (inf before any)."""
        last = self.counters.last_audio_ns
        return math.inf if last is None else (now_ns - last) / _NS

    def flush_speech(self) -> list[Window]:
        """The source ended: the last speech windows (committing every word heard), if any."""
        windows = [w for t in self._speech.values() if (w := t.policy.flush()) is not None]
        self._in_flight += len(windows)
        return windows

    def _speech_result(self, t: _SpeechTrack, window: Window, transcript: Transcript, now_ns: int) -> None:
        latency_s = max(0.0, (now_ns - window.newest_capture_ns) / _NS)
        for caption in t.policy.result(window, transcript):
            self._publish(caption, latency_s, now_ns)
            if caption.state is CaptionState.FINAL:
                self._speech_final(t, caption)
        self._live_subtitles(t, None, window.end_s)  # type: ignore[arg-type]

    def _speech_final(self, t: _SpeechTrack, caption: Caption) -> None:
        t.last_final = caption
        t.history.append(caption)
        if self.settings.collect_finals:
            t.finals.append(caption)
        self._live_subtitles(t, caption, None)  # type: ignore[arg-type]
        if t.alerts is not None:
            self._alerts(t.alerts.observe(self.stream, caption.seq, caption.text, caption.start_s, caption.end_s))

    # ------------------------------------------------------------------ results

    def feed_result(self, window: Window, result: CaptionResult | Transcript, now_ns: int) -> list[Event]:
        """The engine's result for a window this processor handed out (a Transcript for a speech
        window)."""
        self._in_flight = max(0, self._in_flight - 1)
        sp = self._speech.get(window.track)
        if sp is not None:
            if not isinstance(result, Transcript):
                raise TypeError(f"stream {self.stream}: speech window {window.index} got {type(result).__name__}")
            self.counters.windows_captioned += 1
            self._speech_result(sp, window, result, now_ns)
            self._events.append(ProgressEvent(self.stream, window.end_s, window.track, window.start_s, result.text))
            return self.take_events()
        assert isinstance(result, CaptionResult)
        t = self._tracks[window.track]
        c = self.counters
        c.windows_captioned += 1
        c.last_window_end_s = window.end_s
        t.seen = (window.end_s, result.objects)
        cut = self.picture.cut_before(window.start_s) if t.settings.input == "video" else None
        latency_s = max(0.0, (now_ns - window.newest_capture_ns) / _NS)
        newest_seq = None
        for caption in t.stabilizer.observe(window.index, window.start_s, window.end_s, result,
                                            window.newest_capture_ns, cut):
            self._publish(caption, latency_s, now_ns)
            newest_seq = caption.seq
        final = t.stabilizer.current_final
        self._live_subtitles(t, final, window.end_s)
        if final is not None and t.alerts is not None:
            self._alerts(t.alerts.observe(self.stream, final.seq, final.text, final.start_s, final.end_s))
        if t.alerts is not None and t.alerts.watches_objects:
            # object rules look at every window (an empty one is what ends their alerts), at its newest frame
            seq = newest_seq if newest_seq is not None else final.seq if final is not None else None
            self._alerts(t.alerts.observe_objects(self.stream, seq, result.objects, window.end_s))
        self._collect_closed(t)
        self._events.append(ProgressEvent(self.stream, window.end_s, window.track, window.start_s, result.text,
                                          result.objects))
        return self.take_events()

    def _publish(self, caption: Caption, latency_s: float | None, now_ns: int) -> None:
        self.counters.last_caption_ns = now_ns
        if caption.state is CaptionState.FINAL:
            self.counters.last_final = caption.text
        self._events.append(CaptionEvent(caption, latency_s))

    def _collect_closed(self, t: _Track) -> None:
        closed = t.stabilizer.pop_closed_finals()
        t.history.extend(closed)
        for c in closed:
            self._live_subtitles(t, c, None)
        if self.settings.collect_finals:
            t.finals.extend(closed)

    def _live_subtitles(self, t: _Track, final: Caption | None, media_s: float | None,
                        ended: bool = False) -> None:
        """Feed the live WebVTT: the open final's growing span, closed finals, settled media time."""
        vtt = t.live_vtt
        if vtt is None or vtt.ended:
            return
        assert t.settings.live_vtt is not None
        try:
            if final is not None:
                vtt.add_final(final)
            if ended:
                vtt.end(media_s)
            elif media_s is not None:
                vtt.advance(max(0.0, media_s - t.settings.live_vtt.settle_s))
        except (ValueError, RuntimeError) as exc:  # boundary: subtitles must never cost a caption
            log.warning("stream %s: live WebVTT: %s", self.stream, exc)

    # ------------------------------------------------------------------ time and the end

    def tick(self, now_ns: int) -> list[Event]:
        """Time limits that no frame triggers (a stall is the absence of frames)."""
        if self.monitor is not None and not self.status.terminal:
            self._alerts(self.monitor.tick(now_ns))
        return self.take_events()

    def finish(self, now_ns: int) -> list[Event]:
        """The source ended and every window handed out has come back: commit the last scene
        (a file's pending run too), end the live WebVTT, report ENDED."""
        for t in self._tracks.values():
            for caption in t.stabilizer.flush(commit_pending=not self.settings.live):
                self._publish(caption, None, now_ns)
            self._collect_closed(t)
            self._live_subtitles(t, None, self.counters.last_window_end_s, ended=True)
        for sp in self._speech.values():
            for caption in sp.policy.finish():
                self._publish(caption, None, now_ns)
                self._speech_final(sp, caption)
            self._live_subtitles(sp, None, self.counters.audio_s, ended=True)  # type: ignore[arg-type]
        self._set_status(StreamState.ENDED, "end of stream", None, now_ns)
        self._close_alerts()  # the alerts a file's last windows left open (closing twice adds nothing)
        return self.take_events()
