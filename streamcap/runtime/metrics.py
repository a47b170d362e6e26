"""Prometheus metrics: the only place they are defined.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (never the process-global one), so a
test can build several servers in one process. Metric objects are plain attributes named after
the metric without the ``streamcap_`` namespace, e.g.
``metrics.frames_in_total.labels(stream="cam1").inc()``.

Who updates what: the :class:`~streamcap.server.hub.Hub` updates ``captions_total``,
``clients``, ``clients_dropped_total``, ``messages_dropped_total`` and ``stream_up`` as it
publishes; sources, ring buffers, the windower, the engine runner and the pipeline update the
rest. prometheus_client is thread-safe, so worker threads may update metrics directly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

NAMESPACE = "streamcap"

#: One engine call (a batch of windows), 5 ms .. 5 s.
ENGINE_LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
)
#: Per-window pipeline overhead and glass-to-result, 1 ms .. 5 s.
OVERHEAD_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5,
                      2.0, 2.5, 5.0, 10.0)
#: Newest frame of a window decoded → its caption published; includes queueing and inference.
GLASS_TO_CAPTION_BUCKETS_S = (
    0.025,
    0.05,
    0.1,
    0.2,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
)


class Metrics:
    """All streamcap metrics, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        ns = NAMESPACE
        self.frames_in_total = Counter(
            "frames_in_total",
            "Frames decoded from a source.",
            ["stream"],
            namespace=ns,
            registry=reg,
        )
        self.frames_dropped_total = Counter(
            "frames_dropped_total",
            "Frames dropped before captioning, by reason (ring_full, decode_error, ...).",
            ["stream", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.audio_in_seconds_total = Counter(
            "audio_in_seconds_total",
            "Seconds of audio decoded from a source (streams with a speech track).",
            ["stream"],
            namespace=ns,
            registry=reg,
        )
        self.audio_dropped_seconds_total = Counter(
            "audio_dropped_seconds_total",
            "Seconds of audio dropped before recognition, by reason (speech_overflow, ...).",
            ["stream", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.windows_captioned_total = Counter(
            "windows_captioned_total",
            "Windows the engine captioned.",
            ["stream"],
            namespace=ns,
            registry=reg,
        )
        self.windows_dropped_total = Counter(
            "windows_dropped_total",
            "Windows dropped without a caption, by reason (queue_full, engine_error, ...).",
            ["stream", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.captions_total = Counter(
            "captions_total",
            "Captions published, by state (partial, final).",
            ["stream", "state"],
            namespace=ns,
            registry=reg,
        )
        self.engine_latency_seconds = Histogram(
            "engine_latency_seconds",
            "Wall time of one engine call (a batch of windows).",
            namespace=ns,
            registry=reg,
            buckets=ENGINE_LATENCY_BUCKETS_S,
        )
        self.frame_cache_total = Counter(
            "frame_cache_total",
            "Frame-feature cache lookups by result (hit, miss) and entries evicted when full (evicted), "
            "per engine (caption: the caption model's frame features; describer: its detections).",
            ["result", "engine"],
            namespace=ns,
            registry=reg,
        )
        self.frame_cache_hit_ratio = Gauge(
            "frame_cache_hit_ratio", "Share of frame-cache lookups that hit, since the start, per engine.",
            ["engine"], namespace=ns, registry=reg,
        )
        self.glass_to_caption_seconds = Histogram(
            "glass_to_caption_seconds",
            "From decoding the newest frame of a window to publishing its caption.",
            ["stream"],
            namespace=ns,
            registry=reg,
            buckets=GLASS_TO_CAPTION_BUCKETS_S,
        )
        # every window, published or not (glass_to_caption_seconds sees only published captions)
        self.window_glass_to_result_seconds = Histogram(
            "window_glass_to_result_seconds",
            "Every window: from decoding its newest frame (or audio) to its result back on the event loop.",
            ["engine"], namespace=ns, registry=reg, buckets=OVERHEAD_BUCKETS_S,
        )
        self.pipeline_overhead_seconds = Histogram(
            "pipeline_overhead_seconds",
            "Every window: glass-to-result minus the engine call's own time (planning, queueing, waiting "
            "for the engine thread, handing results back).",
            ["engine"], namespace=ns, registry=reg, buckets=OVERHEAD_BUCKETS_S,
        )
        self.clients = Gauge("clients", "Websocket clients connected.", namespace=ns, registry=reg)
        self.requests_refused_total = Counter(
            "requests_refused_total",
            "HTTP/websocket requests refused by access control, by HTTP status (401, 403).",
            ["status"],
            namespace=ns,
            registry=reg,
        )
        self.alerts_total = Counter(
            "alerts_total",
            "Alert steps published, by rule and phase (start, update, end).",
            ["rule", "phase"],
            namespace=ns,
            registry=reg,
        )
        self.alerts_acked_total = Counter(
            "alerts_acked_total", "Alerts acknowledged.", namespace=ns, registry=reg)
        self.bad_requests_total = Counter(
            "bad_requests_total",
            "Requests and ingest messages rejected as bad input, by error code (bad_sdp, bad_frame, too_large, ...).",
            ["code"],
            namespace=ns,
            registry=reg,
        )
        self.clients_dropped_total = Counter(
            "clients_dropped_total",
            "Websocket clients disconnected by the server, by reason (slow_client, ...).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.messages_dropped_total = Counter(
            "messages_dropped_total",
            "Messages not delivered to a client, by reason.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.source_reconnects_total = Counter(
            "source_reconnects_total",
            "Reconnect attempts of a live source.",
            ["stream"],
            namespace=ns,
            registry=reg,
        )
        self.stream_up = Gauge(
            "stream_up", "1 while a stream is live, else 0.", ["stream"], namespace=ns, registry=reg
        )
        self.sink_errors_total = Counter(
            "sink_errors_total",
            "Events a sink (hub, alert log, metrics, callbacks) failed on; the other sinks and the "
            "stream went on.",
            ["sink"],
            namespace=ns,
            registry=reg,
        )
        # cluster mode (streamcap.runtime.bus): the Redis Streams caption log and bus
        self.bus_dropped_total = Counter(
            "bus_dropped_total",
            "Messages a stream worker did not write to the bus: bus_full (its queue was full while Redis "
            "was away; the oldest went), stale_seq (Redis refused a final numbered at or below the "
            "stream's newest: a newer worker owns the stream).",
            ["reason"], namespace=ns, registry=reg,
        )
        self.bus_queue = Gauge("bus_queue", "Messages queued for the bus, not yet written.",
                               namespace=ns, registry=reg)
        self.bus_errors_total = Counter(
            "bus_errors_total", "Failed bus operations (write, read, decode of an entry); writes and reads "
            "are retried.", ["op"], namespace=ns, registry=reg,
        )
        self.push_streams_created_total = Counter(
            "push_streams_created_total",
            "Push streams created by publishers (WHIP or /ingest to an unknown stream id).",
            namespace=ns,
            registry=reg,
        )
        self.push_streams_removed_total = Counter(
            "push_streams_removed_total",
            "Push streams created by publishers and removed by the server, by reason (idle: no publisher "
            "for ingest.idle_expiry_s; never_connected: its WHIP session never connected).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.limit_refusals_total = Counter(
            "limit_refusals_total",
            "Requests refused by a named limit (max_streams_per_token, max_push_streams, max_sessions, "
            "max_sessions_per_token, max_pixels, allowed_schemes, file_roots, ...).",
            ["limit"],
            namespace=ns,
            registry=reg,
        )
        self.whip_sessions_closed_total = Counter(
            "whip_sessions_closed_total",
            "WHIP sessions closed, by reason (connect_timeout, failed, closed, ended, shutdown).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.export_messages_total = Counter(
            "export_messages_total",
            "Delivery attempts of exported alerts/finals, by destination and outcome (delivered, retry, rejected).",
            ["destination", "outcome"],
            namespace=ns,
            registry=reg,
        )
        self.export_outbox_depth = Gauge(
            "export_outbox_depth",
            "Messages waiting in a destination's outbox (the one in flight included).",
            ["destination"],
            namespace=ns,
            registry=reg,
        )
        self.export_dropped_total = Counter(
            "export_dropped_total",
            "Exported messages given up, by destination and reason (outbox_full, rejected, shutdown).",
            ["destination", "reason"],
            namespace=ns,
            registry=reg,
        )

    def forget_stream(self, stream: str) -> int:
        """Remove every series labelled ``stream=<stream>`` (the stream was removed, so its series
        must not pile up). Returns how many series went."""
        removed = 0
        for metric in vars(self).values():
            names = getattr(metric, "_labelnames", ())
            if "stream" not in names:
                continue
            at = names.index("stream")
            # prometheus_client keeps a labelled metric's children by their label values
            for values in [v for v in list(metric._metrics) if v[at] == stream]:  # noqa: SLF001
                metric.remove(*values)
                removed += 1
        return removed

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
