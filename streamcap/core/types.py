"""Value types passed between pipeline stages.

Frozen dataclasses, no behaviour beyond small derived properties. Times inside the process
are monotonic nanoseconds (``*_ns``); media time is seconds (``*_s``) since the stream's first
frame. Wall-clock time appears only on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class StreamState(str, Enum):
    STARTING = "starting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    ERROR = "error"


class CaptionState(str, Enum):
    PARTIAL = "partial"
    FINAL = "final"


class DropPolicy(str, Enum):
    """What a bounded buffer does when it is full."""

    DROP_OLDEST = "drop_oldest"  # live sources: keep the newest, count the overwritten one
    BLOCK = "block"  # files/batch: the producer waits, nothing is lost


class DropReason(str, Enum):
    """Why a frame or a window was dropped: the ``reason`` label of the drop counters."""

    RING_FULL = "ring_full"  # a live stream's ring overwrote its oldest frame
    PTS_REGRESSION = "pts_regression"  # a frame's pts went backwards
    # discontinuities of a source's container time (core.mediaclock): the frames are kept on a
    # re-based media time, but each discontinuity is counted here, once, so it shows in /metrics
    PTS_JUMP = "pts_jump"  # the container's time leapt forward beyond what was received
    PTS_REWIND = "pts_rewind"  # the container's time went back (e.g. a restarted encoder)
    DECODE_ERROR = "decode_error"  # a packet the decoder could not decode (corrupt data)
    HANDOFF_FULL = "handoff_full"  # the decoder thread's handoff to the loop was full (live)
    INGEST_FULL = "ingest_full"  # a pushed stream's frame queue was full
    ENGINE_BUSY = "engine_busy"  # a live window replaced in the engine's full queue
    BEHIND_LIVE = "behind_live"  # overdue live windows skipped so captions never lag
    ENGINE_ERROR = "engine_error"  # the engine failed on the window's batch
    STREAM_REMOVED = "stream_removed"  # the stream went away with windows still queued
    MEDIA_GAP = "media_gap"  # windows that fell wholly inside a gap between two frames (no picture)
    BAD_PTS = "bad_pts"  # a frame whose media time is not finite or beyond MAX_MEDIA_S
    SPEECH_OVERFLOW = "speech_overflow"  # a live speech buffer was full: its oldest audio was dropped
    AUDIO_FULL = "audio_full"  # an audio chunk dropped from a full handoff/queue (live), or
    # audio that waited too long for the stream's first picture (streamcap.sources.reader)


#: drop reasons that mean the machine is not keeping up (they feed ``health:behind``)
BEHIND_REASONS = frozenset({DropReason.RING_FULL, DropReason.HANDOFF_FULL, DropReason.INGEST_FULL,
                            DropReason.ENGINE_BUSY, DropReason.BEHIND_LIVE})

#: the frame rates a publisher or a source URL may claim: at most 10 s between frames ...
MIN_FPS = 0.1
#: ... and at least 1/120 s
MAX_FPS = 120.0

#: the track every stream has: captions of the picture
VIDEO_TRACK = "video"
#: the track of words spoken (Whisper over the stream's audio)
SPEECH_TRACK = "speech"
#: every audio chunk inside the process is mono float32 at this rate (Whisper's and the VAD's)
AUDIO_RATE = 16_000


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded frame. ``image`` is RGB uint8 H×W×3 (already resized for the engine when it
    comes out of a ring buffer)."""

    stream: str
    seq: int
    capture_ns: int  # monotonic ns when the frame was decoded
    pts_s: float  # media time, seconds since the stream's first frame
    image: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class AudioChunk:
    """Decoded audio: mono float32 samples in [-1, 1] at :data:`AUDIO_RATE`, the first one at
    ``pts_s`` on the stream's media clock (the same clock as its frames' ``pts_s``)."""

    stream: str
    seq: int
    capture_ns: int  # monotonic ns when the chunk was decoded
    pts_s: float
    samples: np.ndarray  # float32, shape (n,)

    @property
    def end_s(self) -> float:
        return self.pts_s + len(self.samples) / AUDIO_RATE


@dataclass(frozen=True, slots=True)
class SpeechWord:
    """One word of a transcript: ``start_s``/``end_s`` relative to the start of the audio given
    to the engine (the caller adds its media time)."""

    text: str  # as Whisper wrote it, leading space stripped
    start_s: float
    end_s: float
    prob: float = 1.0


@dataclass(frozen=True, slots=True)
class Transcript:
    """What a speech engine heard in one request's audio."""

    text: str
    words: tuple[SpeechWord, ...]
    language: str  # ISO 639-1 code the model used ("en")
    no_speech_prob: float  # P(<|nospeech|>) at the first step
    avg_logprob: float  # mean log-probability per generated token (<= 0)
    tokens: tuple[int, ...] = ()  # generated token ids (special and timestamp tokens included)
    aligned: bool = False  # word times from the cross-attention alignment (else spread over segments)


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """K frames evenly spaced over ``[start_s, end_s]`` of media time."""

    stream: str
    index: int
    start_s: float
    end_s: float
    frames: tuple[Frame, ...]
    track: str = VIDEO_TRACK
    # a speech window: its audio (16 kHz mono float32 from start_s), the initial prompt (text
    # committed before it) and when its newest audio was decoded; frames is empty
    audio: np.ndarray | None = None
    prompt: str = ""
    audio_capture_ns: int = 0
    final_pass: bool = False  # the speaker stopped: every word heard is committed

    @property
    def newest_capture_ns(self) -> int:
        if not self.frames:
            return self.audio_capture_ns
        return max(f.capture_ns for f in self.frames)


MOTIONS = ("left", "right", "towards", "away", "still", "moving", "unknown")
"""How a group of objects moved over a window, as seen by the scene describer: a direction across or
along the view, ``still``, ``moving`` (it moved but no one direction holds) or ``unknown`` (seen in
too few frames to tell, e.g. just after a cut)."""


@dataclass(frozen=True, slots=True)
class SceneObject:
    """A group of same-class objects moving alike in one window (the scene describer's structured
    output): ``count`` objects of ``label`` (a COCO class name) with ``motion`` (one of
    :data:`MOTIONS`). ``boxes``: each object's box in the window's last frame, normalised
    ``(x0, y0, x1, y1)`` in 0..1 of the picture (zones and snapshots use them)."""

    label: str
    count: int
    motion: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class CaptionResult:
    """What an engine says about one window."""

    text: str
    score: float  # mean log-probability per generated token (≤ 0; higher is surer)
    objects: tuple[SceneObject, ...] = ()  # what a scene describer counted (caption models: none)
    # what windows must share to agree on a final (None: the normalised text); the scene describer's
    # exact counts change from window to window, its gist (coarse counts, main motion) less often
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Caption:
    """A caption as the stabiliser publishes it."""

    stream: str
    seq: int
    state: CaptionState
    text: str
    start_s: float
    end_s: float
    score: float = 0.0
    window_index: int = -1
    capture_ns: int = 0  # newest frame behind it, for glass-to-caption latency
    track: str = VIDEO_TRACK  # which caption track of the stream said it
    words: tuple[SpeechWord, ...] = ()  # speech captions: each word on the stream's media time
    objects: tuple[SceneObject, ...] = ()  # scene describer: what the newest window behind it counted


@dataclass(frozen=True, slots=True)
class Status:
    stream: str
    state: StreamState
    detail: str = ""
    code: str | None = None
    extra: dict = field(default_factory=dict)


class AlertPhase(str, Enum):
    START = "start"
    UPDATE = "update"
    END = "end"


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alert:
    """One step of an alert's life. ``start_s``/``end_s`` are the stream's media time (``end_s``
    is None until the alert ends); ``caption_seq`` is the final caption behind it (None for
    stream-health alerts)."""

    id: str
    stream: str
    rule: str
    phase: AlertPhase
    severity: Severity
    caption_seq: int | None
    start_s: float
    end_s: float | None = None
    detail: str = ""
