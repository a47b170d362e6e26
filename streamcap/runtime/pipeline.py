"""The one place that wires the stages together.

Per stream, a :class:`StreamRunner` task: ``source.recv()`` → ingest subsampling → ring buffer →
window planner → the shared :class:`WindowQueue`. One engine task takes batches of windows from
that queue (up to ``engine.max_batch``, from any streams), runs the engine in a dedicated
single-thread executor (never on the event loop), and routes each result back to its stream's
stabiliser, whose captions go to the ``on_caption`` sink (the websocket hub, or a file writer).

Everything is bounded: the source handoff, the ring (``pipeline.ring_capacity``), the window queue
(``engine.queue_size``). Live streams drop (oldest window first, reason ``engine_busy``; ring
overwrites, reason ``ring_full``); files apply back-pressure instead and lose nothing. Every drop
is counted in :class:`~streamcap.runtime.metrics.Metrics` with its reason.

Async contract: all methods run on one event loop; only the engine call leaves it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from streamcap.alerts.rules import CaptionAlerts, Similarity
from streamcap.outputs.chapters import Chapter, chapters_from_finals, chapters_since
from streamcap.runtime.config import Config
from streamcap.engine.base import CaptionEngine, decode_options_from_config
from streamcap.engine.preprocess import resize_frame
from streamcap.core.errors import SourceEnded, SourceError, StreamcapError
from streamcap.alerts.health import HealthLimits, HealthMonitor
from streamcap.outputs.livevtt import LiveVttSegmenter
from streamcap.runtime.metrics import Metrics
from streamcap.core.ringbuffer import FrameRing
from streamcap.sources.base import Source
from streamcap.sources.push import PushSource
from streamcap.sources.url import (
    SourceKind,
    open_source,
    parse_source_url,
    sanitize_url,
)
from streamcap.core.stabilizer import CaptionStabilizer
from streamcap.core.types import (
    Alert,
    Caption,
    CaptionResult,
    CaptionState,
    DropPolicy,
    Frame,
    Severity,
    Status,
    StreamState,
    Window,
)
from streamcap.core.windowing import (
    WindowPlanner,
    build_window,
    min_ring_capacity,
    pick_frames,
)

log = logging.getLogger(__name__)

CaptionSink = Callable[[Caption], None]
StatusSink = Callable[[Status], None]
AlertSink = Callable[[Alert], None]
#: drop reasons that mean the machine is not keeping up (they feed health:behind)
BEHIND_REASONS = frozenset({"ring_full", "handoff_full", "ingest_full", "engine_busy", "behind_live"})
HEALTH_TICK_S = 0.25


class WindowQueue:
    """Bounded FIFO of windows waiting for the engine.

    Policy when full: a live stream's window replaces the oldest waiting window of the same
    stream (else the oldest of any live stream) and that one is counted as dropped with reason
    ``engine_busy``; a file's window waits for space (``BLOCK``), so nothing is lost.
    """

    def __init__(self, maxsize: int, on_drop: Callable[[Window, str], None]) -> None:
        self.maxsize = maxsize
        self._items: deque[tuple[Window, bool]] = deque()
        self._cond = asyncio.Condition()
        self._on_drop = on_drop

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, window: Window, *, live: bool) -> None:
        async with self._cond:
            if live and len(self._items) >= self.maxsize:
                victim = next((i for i, (w, lv) in enumerate(self._items) if lv and w.stream == window.stream),
                              None)
                if victim is None:
                    victim = next((i for i, (_, lv) in enumerate(self._items) if lv), None)
                if victim is None:  # only file windows queued: the live one is dropped instead
                    self._on_drop(window, "engine_busy")
                    return
                dropped, _ = self._items[victim]
                del self._items[victim]
                self._on_drop(dropped, "engine_busy")
            while len(self._items) >= self.maxsize:
                await self._cond.wait()
            self._items.append((window, live))
            self._cond.notify_all()

    async def get_batch(self, max_batch: int, max_wait_s: float = 0.0) -> list[Window]:
        """Up to ``max_batch`` windows, oldest first. Once one is ready, wait at most ``max_wait_s``
        for more (from any stream) to fill the batch."""
        async with self._cond:
            while not self._items:
                await self._cond.wait()
            if max_wait_s > 0 and len(self._items) < max_batch:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + max_wait_s
                while len(self._items) < max_batch and (left := deadline - loop.time()) > 0:
                    try:
                        await asyncio.wait_for(self._cond.wait(), left)
                    except TimeoutError:
                        break
            batch = [self._items.popleft()[0] for _ in range(min(max_batch, len(self._items)))]
            self._cond.notify_all()
            return batch

    def discard_stream(self, stream: str) -> list[Window]:
        """Take every waiting window of ``stream`` out of the queue (the stream was removed);
        the caller counts them. Call on the loop thread."""
        gone = [w for w, _ in self._items if w.stream == stream]
        if gone:
            self._items = deque((w, lv) for w, lv in self._items if w.stream != stream)
        return gone


@dataclass
class StreamHealth:
    state: StreamState = StreamState.STARTING
    detail: str = ""
    frames_in: int = 0
    windows_captioned: int = 0
    last_frame_ns: int | None = None
    last_caption_ns: int | None = None
    last_final: str | None = None
    media_s: float | None = None  # pts of the newest frame
    last_window_end_s: float | None = None
    url: str = ""
    extra: dict = field(default_factory=dict)


class StreamRunner:
    """Reads one source into its ring, plans windows, and turns engine results into captions."""

    def __init__(self, pipeline: Pipeline, stream_id: str, url: str, *, hidden: bool = False,
                 collect_finals: bool | None = None, decode: dict | None = None) -> None:
        self.p = pipeline
        self.id = stream_id
        self.url = url
        # hidden: a job stream (an HTTP caption request), not broadcast and not listed
        self.hidden = hidden
        self.collect_finals = pipeline.collect_finals if collect_finals is None else collect_finals
        self.decode = dict(decode or {})  # per-stream decoding overrides (e.g. max_new_tokens)
        self.epoch: tuple[str, int] = ("", 0)  # set by the pipeline: tells apart streams re-added under one id
        self.safe_url = sanitize_url(url)
        cfg = pipeline.config
        eng = pipeline.engine
        self.health = StreamHealth(url=self.safe_url)
        self.live = True
        self.source: Source | None = None
        self.stabilizer = CaptionStabilizer(stream_id, agree=cfg.stabilizer.agree,
                                            fresh_agree=cfg.stabilizer.fresh_agree or None)
        self._cut_diff = cfg.stabilizer.cut_diff
        self._cuts: deque[float] = deque(maxlen=16)  # media times of recent scene cuts
        self._recent_changes: deque[float] = deque(maxlen=10)
        self._area_thumb: np.ndarray | None = None
        self.window_s = cfg.windows.window_s or eng.window_s
        self.stride_s = cfg.windows.stride_s
        self.min_gap_s = 1.0 / cfg.windows.max_ingest_fps - 1e-3
        self._last_kept_pts: float | None = None
        s = eng.preprocessing.image_size
        self.frame_shape = (s, s, 3)
        self.ring: FrameRing | None = None
        self.planner: WindowPlanner | None = None
        self.task: asyncio.Task | None = None
        self.finals: list[Caption] = []  # closed finals (full spans), kept only when collect_finals
        self.history: deque[Caption] = deque(maxlen=cfg.pipeline.finals_history)  # for chapters
        live = cfg.subtitles.live
        self.live_vtt: LiveVttSegmenter | None = None  # the live WebVTT of this stream's finals
        if live.enabled and not hidden:
            self.live_vtt = LiveVttSegmenter(live.segment_s, live.window_segments, cfg.subtitles.rules())
        self.settle_s = live.settle_s if live.settle_s is not None else \
            self.window_s + cfg.stabilizer.agree * self.stride_s
        self.monitor: HealthMonitor | None = (
            HealthMonitor(stream_id, pipeline.health_limits, pipeline.new_alert_id)
            if pipeline.health_limits is not None and not hidden else None)
        self._thumb: np.ndarray | None = None  # grey thumbnail of the last kept frame (frozen picture)
        self._windows_in_flight = 0  # queued or being captioned; the stream ends after they are done
        self._windows_done = asyncio.Event()
        self._windows_done.set()

    # ---------------------------------------------------------------- status & drops

    def _status(self, status: Status) -> None:
        self.health.state = status.state
        self.health.detail = status.detail
        if status.state is StreamState.RECONNECTING:
            self.p.metrics.source_reconnects_total.labels(stream=self.id).inc()
        if not self.hidden:
            self.p.on_status(status)
        if self.monitor is not None:
            now = self.p.clock()
            if status.state is StreamState.RECONNECTING:
                self.publish_alerts(self.monitor.reconnect(now))
            self.publish_alerts(self.monitor.status(status.state, now))
        if status.state in (StreamState.ENDED, StreamState.ERROR):
            self.close_alerts()

    def _drop_frame(self, reason: str) -> None:
        self.p.metrics.frames_dropped_total.labels(stream=self.id, reason=reason).inc()
        self.count_drop(reason)

    def count_drop(self, reason: str, count: int = 1) -> None:
        if self.monitor is not None and reason in BEHIND_REASONS:
            self.publish_alerts(self.monitor.drop(self.p.clock(), count))

    # ---------------------------------------------------------------- alerts

    def publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            level = logging.WARNING if alert.severity is not Severity.INFO else logging.INFO
            log.log(level, "stream %s: alert %s %s %s%s", self.id, alert.rule, alert.phase.value, alert.id,
                    f" ({alert.detail})" if alert.detail else "")
            if self.p.on_alert is not None and not self.hidden:
                self.p.on_alert(alert)

    def close_alerts(self) -> None:
        """The stream ended or is going away: its open alerts end."""
        at = self.health.media_s or 0.0
        if self.monitor is not None:
            self.publish_alerts(self.monitor.close())
        if self.p.caption_alerts is not None:
            self.publish_alerts(self.p.caption_alerts.close(self.id, at))

    def _detect_cut(self, frame: Frame) -> None:
        """Scene cuts, for the stabiliser: a large change of an area-averaged 16x16 grey thumbnail
        compared with the recent changes (noise and motion stay far below a cut)."""
        thumb = cv2.resize(frame.image, (16, 16), interpolation=cv2.INTER_AREA).mean(axis=2, dtype=np.float32)
        if self._area_thumb is not None and self._area_thumb.shape == thumb.shape:
            change = float(np.abs(thumb - self._area_thumb).mean())
            typical = float(np.median(self._recent_changes)) if self._recent_changes else 0.0
            if change >= self._cut_diff and change >= 6 * typical:
                self._cuts.append(frame.pts_s)
            else:
                self._recent_changes.append(change)
        self._area_thumb = thumb

    def _cut_before(self, start_s: float) -> float | None:
        """The latest scene cut at or before ``start_s``."""
        return next((c for c in reversed(self._cuts) if c <= start_s + 1e-6), None)

    def _watch_picture(self, frame: Frame) -> None:
        self._detect_cut(frame)
        if self.monitor is None:
            return
        grey = frame.image[::4, ::4].mean(axis=2, dtype=np.float32)
        change = None if self._thumb is None or self._thumb.shape != grey.shape else \
            float(np.abs(grey - self._thumb).mean())
        self._thumb = grey
        self.publish_alerts(self.monitor.frame(frame.capture_ns, frame.pts_s, float(grey.mean()),
                                               float(grey.std()), change))

    # ---------------------------------------------------------------- main loop

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except StreamcapError as e:
            log.error("stream %s: %s (%s)", self.id, e.detail, self.safe_url)
            self._emit_status(StreamState.ERROR, e.detail, e.code)
        except Exception as e:  # boundary: one stream's bug must not stop the others
            log.exception("stream %s: unexpected failure (%s)", self.id, self.safe_url)
            self._emit_status(StreamState.ERROR, f"internal error: {type(e).__name__}: {e}", "internal_error")
        finally:
            if self.source is not None:
                await self.source.aclose()

    def _emit_status(self, state: StreamState, detail: str, code: str | None = None) -> None:
        if self.health.state in (StreamState.ERROR, StreamState.ENDED) and state is self.health.state:
            return
        self._status(Status(self.id, state, detail, code))

    def open_source(self) -> Source:
        """Open this stream's source (once); raises BadSourceURL with a clear message."""
        if self.source is not None:
            return self.source
        cfg = self.p.config
        spec = parse_source_url(self.url)
        self.live = spec.live
        pre = self.p.engine.preprocessing
        kwargs: dict = {
            "on_status": self._status,
            "on_drop": self._drop_frame,
            "frame_transform": lambda img: resize_frame(img, pre),
            "clock": self.p.clock,
        }
        if spec.kind is SourceKind.PUSH:
            kwargs["max_queued_frames"] = cfg.ingest.max_queued_frames
        elif spec.kind is not SourceKind.SYNTHETIC and spec.live:
            kwargs["stall_timeout_s"] = cfg.pipeline.stall_timeout_s
        self.source = open_source(self.id, spec, **kwargs)
        return self.source

    async def _run(self) -> None:
        cfg = self.p.config
        self.open_source()
        assert self.source is not None
        fps = cfg.windows.max_ingest_fps
        need = min_ring_capacity(self.window_s + self.stride_s, fps) + 2
        if cfg.pipeline.ring_capacity < need:
            raise StreamcapError(f"pipeline.ring_capacity={cfg.pipeline.ring_capacity} cannot hold a "
                                 f"{self.window_s}s window at {fps} fps (needs {need})", code="bad_config")
        policy = DropPolicy.DROP_OLDEST if self.live else DropPolicy.BLOCK
        self.ring = FrameRing(cfg.pipeline.ring_capacity, self.frame_shape, policy)
        self.planner = WindowPlanner(self.window_s, self.stride_s, self.p.engine.frames_per_window,
                                     max_backlog=cfg.windows.max_backlog if self.live else None)
        log.info("stream %s: opening %s (%s, window %.2fs stride %.2fs)", self.id, self.safe_url,
                 "live" if self.live else "file", self.window_s, self.stride_s)
        while True:
            try:
                frame = await self.source.recv()
            except SourceEnded:
                break
            await self._ingest(frame)
        await self._finish()

    async def _ingest(self, frame: Frame) -> None:
        m = self.p.metrics
        m.frames_in_total.labels(stream=self.id).inc()
        self.health.frames_in += 1
        self.health.last_frame_ns = frame.capture_ns
        self.health.media_s = frame.pts_s
        if self._last_kept_pts is not None and frame.pts_s - self._last_kept_pts < self.min_gap_s:
            return  # ingest subsampling: not a drop, the windows never need that many frames
        assert self.ring is not None and self.planner is not None
        if frame.image.shape != self.frame_shape:
            frame = Frame(frame.stream, frame.seq, frame.capture_ns, frame.pts_s,
                          resize_frame(frame.image, self.p.engine.preprocessing))
        res = self.ring.push(frame)
        if res.dropped and res.reason:
            self._drop_frame(res.reason)
        if not res.stored:
            if self.ring.is_full and not self.live:
                raise StreamcapError("ring buffer full in blocking mode (ring_capacity too small)",
                                     code="bad_config")
            return
        self._last_kept_pts = frame.pts_s
        self._watch_picture(frame)
        for spec in self.planner.due(frame.pts_s):
            frames = pick_frames(self.ring, self.planner.sample_targets(spec))
            self._window_queued()
            await self.p.queue.put(build_window(self.id, spec, frames), live=self.live)
        skipped = self.planner.last_skipped
        if skipped:
            m.windows_dropped_total.labels(stream=self.id, reason="behind_live").inc(skipped)
            self.count_drop("behind_live", skipped)
        self.ring.release_before(self.planner.release_pts())

    def _window_queued(self) -> None:
        self._windows_in_flight += 1
        self._windows_done.clear()

    def window_settled(self) -> None:
        """A window of this stream was captioned or dropped."""
        self._windows_in_flight = max(0, self._windows_in_flight - 1)
        if self._windows_in_flight == 0:
            self._windows_done.set()

    async def _finish(self) -> None:
        """A finite source ended: once its queued windows are captioned, commit the last scene
        and report ENDED (flushing earlier would close the stabiliser's segment while results
        are still coming, losing the last finals and repeating the current one)."""
        await self._windows_done.wait()
        for c in self.stabilizer.flush(commit_pending=not self.live):
            self._publish(c)
        self._collect_closed()
        self._live_subtitles(None, self.health.last_window_end_s, ended=True)
        self._emit_status(StreamState.ENDED, "end of stream")

    # ---------------------------------------------------------------- results

    def on_result(self, window: Window, result: CaptionResult, now_ns: int) -> None:
        self.window_settled()
        self.health.windows_captioned += 1
        self.health.last_window_end_s = window.end_s
        self.p.metrics.windows_captioned_total.labels(stream=self.id).inc()
        for c in self.stabilizer.observe(window.index, window.start_s, window.end_s, result,
                                         window.newest_capture_ns, self._cut_before(window.start_s)):
            self._publish(c)
            self.p.metrics.glass_to_caption_seconds.labels(stream=self.id).observe(
                max(0.0, (now_ns - window.newest_capture_ns) / 1e9))
        final = self.stabilizer.current_final
        self._live_subtitles(final, window.end_s)
        if final is not None and self.p.caption_alerts is not None and not self.hidden:
            self.publish_alerts(self.p.caption_alerts.observe(self.id, final.seq, final.text, final.start_s,
                                                              final.end_s))
        self._collect_closed()
        if self.p.on_progress is not None and not self.hidden:
            self.p.on_progress(self.id, window.end_s)

    def _live_subtitles(self, final: Caption | None, media_s: float | None, ended: bool = False) -> None:
        """Feed the live WebVTT: the open final's growing span, closed finals, settled media time."""
        vtt = self.live_vtt
        if vtt is None or vtt.ended:
            return
        try:
            for c in ([final] if final is not None else []):
                vtt.add_final(c)
            if ended:
                vtt.end(media_s)
            elif media_s is not None:
                vtt.advance(max(0.0, media_s - self.settle_s))
        except (ValueError, RuntimeError) as exc:  # boundary: subtitles must never cost a caption
            log.warning("stream %s: live WebVTT: %s", self.id, exc)

    def _publish(self, c: Caption) -> None:
        self.health.last_caption_ns = self.p.clock()
        if c.state is CaptionState.FINAL:
            self.health.last_final = c.text
        if not self.hidden:
            self.p.on_caption(c)

    def _collect_closed(self) -> None:
        closed = self.stabilizer.pop_closed_finals()
        self.history.extend(closed)
        for c in closed:
            self._live_subtitles(c, None)
        if self.collect_finals:
            self.finals.extend(closed)


class Pipeline:
    """Streams + one engine worker. ``run()`` until cancelled (server) or until every finite
    stream has ended (``stop_when_idle=True``, used by ``streamcap caption``)."""

    def __init__(self, config: Config, engine: CaptionEngine, *, metrics: Metrics,
                 on_caption: CaptionSink, on_status: StatusSink,
                 clock: Callable[[], int] = time.monotonic_ns, collect_finals: bool = False,
                 on_progress: Callable[[str, float], None] | None = None, on_alert: AlertSink | None = None,
                 similarity: Similarity | None = None, warm_texts: Callable[[list[str]], object] | None = None
                 ) -> None:
        self.config = config
        self.on_alert = on_alert
        # alert ids: unique across restarts (a random run prefix) and short
        self._alert_prefix = f"{secrets.token_hex(3)}-"
        self._alert_ids = itertools.count(1)
        acfg = config.alerts
        self.health_limits: HealthLimits | None = None
        if on_alert is not None and acfg.health.enabled:
            self.health_limits = HealthLimits(**acfg.health.model_dump(exclude={"enabled"}))
        self.caption_alerts: CaptionAlerts | None = None
        if on_alert is not None and acfg.rules:
            rules = [r.to_rule(acfg.semantic_threshold) for r in acfg.rules]
            if any(r.description for r in rules) and similarity is None:
                raise StreamcapError("alert rules with a description need the text embedder", code="bad_config")
            self.caption_alerts = CaptionAlerts(rules, self.new_alert_id, similarity)
        self._warm_texts = warm_texts
        self.engine = engine
        self.metrics = metrics
        self.on_caption = on_caption
        self.on_status = on_status
        self.clock = clock
        self.collect_finals = collect_finals
        self.on_progress = on_progress
        self.queue = WindowQueue(config.engine.queue_size, self._drop_window)
        self.runners: dict[str, StreamRunner] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamcap-engine")
        self._tg: asyncio.TaskGroup | None = None
        self.batches = 0
        self._decode_options = decode_options_from_config(config.engine)
        self._cache_seen: dict[str, int] = {}
        self._epochs = itertools.count()
        self._clip_ids = itertools.count(1)
        self._busy = False
        self._idle = asyncio.Event()

    def new_alert_id(self) -> str:
        return f"{self._alert_prefix}{next(self._alert_ids)}"

    def _drop_window(self, window: Window, reason: str) -> None:
        self.metrics.windows_dropped_total.labels(stream=window.stream, reason=reason).inc()
        runner = self.runners.get(window.stream)
        if runner is not None:
            runner.window_settled()
            runner.count_drop(reason)

    # ---------------------------------------------------------------- streams

    def stream_ids(self) -> list[str]:
        return [sid for sid, r in self.runners.items() if not r.hidden]

    def add_stream(self, stream_id: str, url: str, *, hidden: bool = False, collect_finals: bool | None = None,
                   decode: dict | None = None) -> StreamRunner:
        """Add a stream (started at once when the pipeline runs). ``hidden`` streams are jobs:
        their captions and status are not published and they are not listed."""
        if stream_id in self.runners:
            raise ValueError(f"stream {stream_id!r} already exists")
        runner = StreamRunner(self, stream_id, url, hidden=hidden, collect_finals=collect_finals, decode=decode)
        # (this pipeline, n): an engine shared by several pipelines never mixes their frame features
        runner.epoch = (self._alert_prefix, next(self._epochs))
        self.runners[stream_id] = runner
        if self._tg is not None:
            runner.task = self._tg.create_task(runner.run(), name=f"stream-{stream_id}")
        return runner

    async def remove_stream(self, stream_id: str) -> None:
        """Stop a stream and forget it: its task is cancelled (the source closed), its waiting
        windows are dropped (reason ``stream_removed``) and results still in flight are ignored.
        Raises KeyError for an unknown id."""
        runner = self.runners.pop(stream_id)
        for w in self.queue.discard_stream(stream_id):
            self.metrics.windows_dropped_total.labels(stream=stream_id, reason="stream_removed").inc()
        if runner.task is not None and not runner.task.done():
            runner.task.cancel()
            try:
                await runner.task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # we are being cancelled ourselves
                    raise
        elif runner.source is not None:
            await runner.source.aclose()
        runner.close_alerts()
        if not runner.hidden:
            self.on_status(Status(stream_id, StreamState.ENDED, "stream removed", "stream_removed"))
        log.info("stream %s: removed", stream_id)

    def push_source(self, stream_id: str, *, create: bool = True) -> PushSource:
        """The push source of ``stream_id`` (WHIP and websocket ingest publish into it); with
        ``create``, an unknown id becomes a new ``push:`` stream. Raises KeyError (unknown id and
        not ``create``) or ValueError (the stream exists but reads from a URL)."""
        runner = self.runners.get(stream_id)
        if runner is None:
            if not create:
                raise KeyError(stream_id)
            runner = self.add_stream(stream_id, "push:")
        if parse_source_url(runner.url).kind is not SourceKind.PUSH:
            raise ValueError(f"stream {stream_id!r} reads from {runner.safe_url}, not from publishers")
        source = runner.open_source()
        assert isinstance(source, PushSource)
        return source

    def set_stream_decoding(self, stream_id: str, **overrides: object) -> None:
        """Per-stream decoding overrides (e.g. ``max_new_tokens``) for the stream's next windows."""
        self.runners[stream_id].decode.update(overrides)

    async def caption_clip(self, path: str, *, decode: dict | None = None) -> list[Caption]:
        """Caption a whole video file through this (running) pipeline, sharing its engine with the
        live streams; returns the finals. Raises SourceError when the file cannot be read."""
        if self._tg is None:
            raise RuntimeError("the pipeline is not running")
        stream_id = f"clip-{next(self._clip_ids)}"
        runner = self.add_stream(stream_id, path, hidden=True, collect_finals=True, decode=decode)
        try:
            assert runner.task is not None
            await asyncio.shield(runner.task)
        finally:
            if stream_id in self.runners:
                await self.remove_stream(stream_id)
        if runner.health.state is StreamState.ERROR:
            raise SourceError(runner.health.detail or "could not read the video")
        return list(runner.finals)

    def live_subtitles(self, stream_id: str) -> LiveVttSegmenter | None:
        runner = self.runners.get(stream_id)
        return None if runner is None else runner.live_vtt

    def chapters(self, stream_id: str, since_s: float = 0.0) -> list[Chapter]:
        """The stream's chapters so far (closed finals kept in its history, then the open final)
        still going on at or after ``since_s``. KeyError: unknown stream."""
        runner = self.runners[stream_id]
        finals = list(runner.history)
        current = runner.stabilizer.current_final
        if current is not None:
            finals.append(current)
        return chapters_since(chapters_from_finals(finals), since_s)

    def health(self) -> dict:
        now = self.clock()
        out = {}
        for sid, r in self.runners.items():
            if r.hidden:
                continue
            h = r.health
            out[sid] = {
                "state": h.state.value, "detail": h.detail, "url": h.url,
                "frames_in": h.frames_in, "windows_captioned": h.windows_captioned,
                "last_frame_age_s": None if h.last_frame_ns is None else round((now - h.last_frame_ns) / 1e9, 3),
                "last_caption_age_s": None if h.last_caption_ns is None else round((now - h.last_caption_ns) / 1e9, 3),
                "last_final": h.last_final,
                "media_s": h.media_s, "last_window_end_s": h.last_window_end_s,
            }
        return out

    # ---------------------------------------------------------------- run

    async def run(self, *, stop_when_idle: bool = False) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for r in self.runners.values():
                    if r.task is None:
                        r.task = tg.create_task(r.run(), name=f"stream-{r.id}")
                engine_task = tg.create_task(self._engine_loop(), name="engine")
                ticker = tg.create_task(self._health_ticks(), name="health") if self.health_limits else None
                if stop_when_idle:
                    await asyncio.gather(*(r.task for r in self.runners.values() if r.task))
                    await self._drain()
                    engine_task.cancel()
                    if ticker is not None:
                        ticker.cancel()
        finally:
            self._tg = None
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _health_ticks(self) -> None:
        """Periodic stream-health checks (a stall is the absence of frames: nothing else calls)."""
        while True:
            await asyncio.sleep(HEALTH_TICK_S)
            now = self.clock()
            for runner in list(self.runners.values()):
                if runner.monitor is not None and runner.health.state not in (StreamState.ENDED, StreamState.ERROR):
                    runner.publish_alerts(runner.monitor.tick(now))

    async def _drain(self) -> None:
        while len(self.queue) or self._busy:
            self._idle.clear()
            await self._idle.wait()

    def _caption(self, batch: list[Window]) -> list[CaptionResult]:
        """Engine thread: caption a batch; frames are named (stream, runner epoch, seq) for the
        frame cache, so a re-added stream never reuses an old stream's features."""
        groups: dict[tuple, list[int]] = {}  # windows with the same decoding options run together
        keys = []
        for i, w in enumerate(batch):
            runner = self.runners.get(w.stream)
            epoch = runner.epoch if runner is not None else ("", -1)
            keys.append([(w.stream, epoch, f.seq) for f in w.frames])
            overrides = runner.decode if runner is not None else {}
            groups.setdefault(tuple(sorted(overrides.items())), []).append(i)
        results: list[CaptionResult | None] = [None] * len(batch)
        for overrides, idx in groups.items():
            out = self.engine.caption_batch([[f.image for f in batch[i].frames] for i in idx],
                                            keys=[keys[i] for i in idx], **{**self._decode_options, **dict(overrides)})
            for i, r in zip(idx, out):
                results[i] = r
        if self._warm_texts is not None:  # embed new caption texts here, off the event loop
            try:
                self._warm_texts([r.text for r in results if r is not None and r.text])
            except Exception:  # boundary: alerts must never cost a caption
                log.exception("text embedder failed")
        cache = getattr(self.engine, "cache", None)
        if cache is not None:
            m = self.metrics
            for name, value in (("hit", cache.hits), ("miss", cache.misses), ("evicted", cache.evictions)):
                delta = value - self._cache_seen.get(name, 0)
                if delta:
                    m.frame_cache_total.labels(result=name).inc(delta)
                self._cache_seen[name] = value
        return results

    async def _engine_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.queue.get_batch(self.config.engine.max_batch,
                                               self.config.engine.max_wait_ms / 1000.0)
            self._busy = True
            owners = [self.runners.get(w.stream) for w in batch]  # a stream removed meanwhile gets nothing
            try:
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, self._caption, batch)
                except Exception as e:  # boundary: a failed batch becomes counted drops + a log line
                    log.error("engine %s failed on %d window(s): %s", self.engine.name, len(batch), e)
                    for w in batch:
                        self._drop_window(w, "engine_error")
                    continue
                self.metrics.engine_latency_seconds.observe(time.perf_counter() - t0)
                self.batches += 1
                now = self.clock()
                for w, res, owner in zip(batch, results, owners):
                    if owner is not None and self.runners.get(w.stream) is owner:
                        owner.on_result(w, res, now)
            finally:
                self._busy = False
                self._idle.set()

