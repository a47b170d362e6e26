"""What a :class:`~streamcap.core.processor.StreamProcessor` tells the world: frozen events.

The processor returns these from every ``feed_*``/``tick``/``finish`` call; the async shell
(:mod:`streamcap.runtime.pipeline`) hands them to the sinks (hub, alert log, metrics) through
:meth:`streamcap.runtime.sinks.Sinks.dispatch`. Pure values: no behaviour, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcap.core.types import VIDEO_TRACK, Alert, Caption, DropReason, SceneObject, Status


@dataclass(frozen=True, slots=True)
class CaptionEvent:
    """A partial or final caption to publish. ``latency_s``: glass to caption (the newest frame
    behind it was captured this long before the result arrived); None for a final committed at
    the end of a stream."""

    caption: Caption
    latency_s: float | None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One step (start/update/end) of a caption or health alert."""

    alert: Alert


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """The stream's status changed (the processor's state machine accepted the change)."""

    status: Status


@dataclass(frozen=True, slots=True)
class DropEvent:
    """``count`` frames or windows of ``stream`` were dropped for ``reason``."""

    stream: str
    unit: str  # "frame", "window" or "audio_ms" (count: milliseconds of audio)
    reason: DropReason
    count: int = 1
    track: str = VIDEO_TRACK


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A window of a track was captioned: it ended at ``media_s`` (progress bars) and started at
    ``start_s``; ``text`` is the engine's raw text for it, before stabilising."""

    stream: str
    media_s: float
    track: str = VIDEO_TRACK
    start_s: float = 0.0
    text: str = ""
    objects: tuple[SceneObject, ...] = ()  # the scene describer's objects for this window


Event = CaptionEvent | AlertEvent | StatusEvent | DropEvent | ProgressEvent
