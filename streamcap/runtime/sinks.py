"""Where a stream processor's events go: sinks, each isolated from the others.

A sink is a named callable taking one :data:`~streamcap.core.events.Event`. :class:`Sinks`
hands every event to every sink; a sink that raises is logged and counted in
``streamcap_sink_errors_total{sink}`` and the next sink, the next event and the stream go on
(Roboflow's sink guards). ``CancelledError`` is never swallowed. Sinks are called on the event
loop thread and must not block.

The standard sinks: :class:`MetricsSink` (drop counters with their reason, glass-to-caption
latency, windows captioned, reconnects), :class:`AlertLogSink` (one log line per alert step),
:class:`HubSink` (captions, statuses and alerts to websocket clients) and :func:`callback_sink`
(one kind of event to a plain callable, for the caption CLI and tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from streamcap.core.events import AlertEvent, CaptionEvent, DropEvent, Event, ProgressEvent, StatusEvent
from streamcap.core.types import Severity, StreamState
from streamcap.runtime.metrics import Metrics

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]


class Sinks:
    """Named sinks and the guard around each; see the module docstring."""

    def __init__(self, metrics: Metrics, sinks: Mapping[str, EventSink] | None = None) -> None:
        self._metrics = metrics
        self._sinks: dict[str, EventSink] = dict(sinks or {})

    def add(self, name: str, sink: EventSink) -> None:
        if name in self._sinks:
            raise ValueError(f"sink {name!r} already added")
        self._sinks[name] = sink

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._sinks)

    def dispatch(self, events: Iterable[Event], *, only: Iterable[str] | None = None) -> None:
        """Every event to every sink (or to the sinks named in ``only``), in order."""
        chosen = self._sinks if only is None else {n: self._sinks[n] for n in only if n in self._sinks}
        for event in events:
            for name, sink in chosen.items():
                try:
                    sink(event)
                except Exception:  # boundary: one sink's failure must not cost the others or the stream
                    log.exception("sink %s failed on %s of stream %s", name, type(event).__name__,
                                  _stream_of(event))
                    self._metrics.sink_errors_total.labels(sink=name).inc()


def _stream_of(event: Event) -> str | None:
    if isinstance(event, (DropEvent, ProgressEvent)):
        return event.stream
    for attr in ("caption", "status", "alert"):
        inner = getattr(event, attr, None)
        if inner is not None:
            return inner.stream
    return None


class MetricsSink:
    """Counters and histograms from events. ``label`` maps a stream id to its metric label (caption
    jobs share one label, so they never add a series per job)."""

    def __init__(self, metrics: Metrics, label: Callable[[str], str] = lambda s: s) -> None:
        self._m = metrics
        self._label = label

    def __call__(self, event: Event) -> None:
        m = self._m
        if isinstance(event, DropEvent):
            if event.unit == "audio_ms":
                m.audio_dropped_seconds_total.labels(stream=self._label(event.stream),
                                                     reason=event.reason.value).inc(event.count / 1000)
                return
            counter = m.frames_dropped_total if event.unit == "frame" else m.windows_dropped_total
            counter.labels(stream=self._label(event.stream), reason=event.reason.value).inc(event.count)
        elif isinstance(event, CaptionEvent):
            if event.latency_s is not None:
                m.glass_to_caption_seconds.labels(stream=self._label(event.caption.stream)).observe(event.latency_s)
        elif isinstance(event, ProgressEvent):
            m.windows_captioned_total.labels(stream=self._label(event.stream)).inc()
        elif isinstance(event, StatusEvent):
            if event.status.state is StreamState.RECONNECTING:
                m.source_reconnects_total.labels(stream=self._label(event.status.stream)).inc()


class AlertLogSink:
    """One log line per alert step (warning for warning/critical alerts)."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, AlertEvent):
            a = event.alert
            level = logging.WARNING if a.severity is not Severity.INFO else logging.INFO
            log.log(level, "stream %s: alert %s %s %s%s", a.stream, a.rule, a.phase.value, a.id,
                    f" ({a.detail})" if a.detail else "")


class HubSink:
    """Captions, statuses and alerts to the websocket hub (anything with ``publish_caption``,
    ``publish_status`` and ``publish_alert``)."""

    def __init__(self, hub) -> None:
        self._hub = hub

    def __call__(self, event: Event) -> None:
        if isinstance(event, CaptionEvent):
            self._hub.publish_caption(event.caption)
        elif isinstance(event, StatusEvent):
            self._hub.publish_status(event.status)
        elif isinstance(event, AlertEvent):
            self._hub.publish_alert(event.alert)


def callback_sink(kind: type, callback: Callable) -> EventSink:
    """A sink that calls ``callback`` with the payload of events of type ``kind`` (the caption,
    status or alert; ``(stream, media_s)`` for progress)."""
    def payload(event):
        if isinstance(event, CaptionEvent):
            return (event.caption,)
        if isinstance(event, StatusEvent):
            return (event.status,)
        if isinstance(event, AlertEvent):
            return (event.alert,)
        if isinstance(event, ProgressEvent):
            return (event.stream, event.media_s)
        return (event,)

    def sink(event: Event) -> None:
        if isinstance(event, kind):
            callback(*payload(event))

    return sink
