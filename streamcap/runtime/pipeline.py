"""The async shell around the stream processors: sources in, engines in threads, events out.

Per stream, a :class:`StreamRunner` task does only I/O and waiting::

    source.recv() → processor.feed_frame() → engine queue → engine thread → processor.feed_result()
                                 ↘ events ↙                                        ↘ events
                                        Sinks.dispatch (hub, alert log, metrics, callbacks)

Every per-stream rule (sub-sampling, ring, windows, cuts, stabiliser, alerts, health, live
WebVTT, finals, status) lives in the pure :class:`~streamcap.core.processor.StreamProcessor`;
this module owns sockets, threads, queues, the clock and the health ticker. Events go through
:class:`~streamcap.runtime.sinks.Sinks`, which isolates each sink: a failing sink is logged and
counted (``streamcap_sink_errors_total{sink}``), the stream goes on. If the pipeline task dies
anyway, :attr:`Pipeline.failure` says why (``/healthz`` answers 503, ``streamcap run`` exits 1).

One :class:`EngineWorker` per engine: a bounded :class:`WindowQueue` (``engine.queue_size``),
batches of up to ``engine.max_batch`` windows from any streams, run in a dedicated
single-thread executor (never on the event loop). Live streams drop (oldest waiting window
first, reason ``engine_busy``; the ring overwrites, reason ``ring_full``); files apply
back-pressure instead and lose nothing. Every drop is an event with its reason.

Async contract: all methods run on one event loop; only engine calls leave it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

from streamcap.alerts.rules import Rule, Similarity
from streamcap.core.errors import BadSourceURL, SourceEnded, SourceError, StreamcapError
from streamcap.core.events import AlertEvent, CaptionEvent, Event, ProgressEvent, StatusEvent
from streamcap.core.processor import StreamProcessor
from streamcap.core.types import (
    AUDIO_RATE,
    SPEECH_TRACK,
    VIDEO_TRACK,
    Alert,
    AudioChunk,
    Caption,
    CaptionResult,
    DropReason,
    Frame,
    SceneObject,
    Status,
    StreamState,
    Transcript,
    Window,
)
from streamcap.engine.base import CaptionEngine
from streamcap.engine.describer import DescriberEngine
from streamcap.engine.preprocess import resize_frame
from streamcap.outputs.chapters import Chapter, chapters_from_finals, chapters_since
from streamcap.outputs.livevtt import LiveVttSegmenter
from streamcap.runtime.config import Config, source_options
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.settings import DESCRIBER, processor_settings, video_engine_key
from streamcap.runtime.sinks import AlertLogSink, EventSink, MetricsSink, Sinks, callback_sink
from streamcap.sources.base import Source
from streamcap.sources.push import PushSource
from streamcap.sources.url import SourceKind, SourceSpec, open_source, parse_source_url, sanitize_url

log = logging.getLogger(__name__)

CaptionSink = Callable[[Caption], None]
StatusSink = Callable[[Status], None]
AlertSink = Callable[[Alert], None]
#: the metric label every caption job (POST /v1/captions) shares: no series per job
JOB_LABEL = "job"
#: sinks that see every stream, hidden jobs included
_ALL_STREAM_SINKS = ("metrics",)


def describe_failure(exc: BaseException) -> str:
    """``Type: message`` of what killed a task, looking inside exception groups (a TaskGroup
    wraps the real cause)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_failure(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


class WindowQueue:
    """Bounded FIFO of windows waiting for one engine.

    Size: ``maxsize``, or ``per_stream`` windows for each stream that uses the engine (``streams()``)
    when that is more, so windows of many streams that fall due together wait instead of being
    dropped (still bounded: the stream count is).

    Policy when full: a live stream's window replaces the oldest waiting window of the same
    stream; when that stream has none waiting, the oldest window of the live stream with the most
    windows waiting goes (fair: no stream loses its only window while another has several). The
    dropped window is counted with reason ``engine_busy`` (``on_drop``); per stream the queue stays
    in order. A file's window waits for space (``BLOCK``), so nothing is lost.
    """

    def __init__(self, maxsize: int, on_drop: Callable[[Window, DropReason], None], *, per_stream: int = 0,
                 streams: Callable[[], int] | None = None) -> None:
        self.base_size = maxsize
        self.per_stream = per_stream
        self._streams = streams
        self._items: deque[tuple[Window, bool]] = deque()
        self._cond = asyncio.Condition()
        self._on_drop = on_drop

    @property
    def maxsize(self) -> int:
        if self._streams is None or self.per_stream <= 0:
            return self.base_size
        return max(self.base_size, self.per_stream * self._streams())

    def __len__(self) -> int:
        return len(self._items)

    def _full(self) -> bool:
        # below the configured size the queue is never full: the streams are counted only past it
        return len(self._items) >= self.base_size and len(self._items) >= self.maxsize

    def _victim(self, stream: str) -> int | None:
        """Index of the live window to drop for a new window of ``stream`` (None: no live one)."""
        own = next((i for i, (w, lv) in enumerate(self._items) if lv and w.stream == stream), None)
        if own is not None:
            return own
        waiting: dict[str, list[int]] = {}
        for i, (w, lv) in enumerate(self._items):
            if lv:
                waiting.setdefault(w.stream, []).append(i)
        if not waiting:
            return None
        # the most windows waiting; among equals the one whose oldest waited longest
        return max(waiting.values(), key=lambda idx: (len(idx), -idx[0]))[0]

    async def put(self, window: Window, *, live: bool) -> None:
        async with self._cond:
            if live and self._full():
                victim = self._victim(window.stream)
                if victim is None:  # only file windows queued: the live one is dropped instead
                    self._on_drop(window, DropReason.ENGINE_BUSY)
                    return
                dropped, _ = self._items[victim]
                del self._items[victim]
                self._on_drop(dropped, DropReason.ENGINE_BUSY)
            while self._full():
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


class StreamRunner:
    """One stream's task: its source, its :class:`StreamProcessor`, and the waiting in between."""

    def __init__(self, pipeline: Pipeline, stream_id: str, url: str, *, hidden: bool = False,
                 collect_finals: bool | None = None, decode: dict | None = None,
                 tracks: tuple[str, ...] | None = None, engine: str | None = None) -> None:
        self.p = pipeline
        self.id = stream_id
        self.url = url
        # hidden: a job stream (an HTTP caption request), not broadcast and not listed
        self.hidden = hidden
        self.metric_label = JOB_LABEL if hidden else stream_id  # jobs never add a series each
        self.safe_url = sanitize_url(url)
        self.decode = dict(decode or {})  # decoding overrides set at run time (e.g. max_new_tokens)
        self.epoch: tuple[str, int] = ("", 0)  # tells apart streams re-added under one id (frame cache)
        # a bad URL is the stream's error (status ERROR when it runs), not the caller's exception
        self._bad_url: BadSourceURL | None = None
        try:
            self.spec: SourceSpec | None = parse_source_url(url)
        except BadSourceURL as exc:
            self.spec, self._bad_url = None, exc
        self.live = self.spec.live if self.spec is not None else True
        collect = pipeline.collect_finals if collect_finals is None else collect_finals
        # what watches the picture: the caption model ("default") or the scene describer
        choice = engine or pipeline.config.stream_config(stream_id).engine
        self.engine_key = video_engine_key(choice, self.spec.kind if self.spec is not None else None,
                                           describer=pipeline.describer is not None, stream_id=stream_id)
        self.engine = pipeline.video_engines[self.engine_key]
        self.aspect: float | None = None  # the source picture's width / height, once a frame came
        self.processor = StreamProcessor(
            processor_settings(pipeline.config, stream_id, self.engine, live=self.live, hidden=hidden,
                               collect_finals=collect, health=pipeline.on_alert_wanted, tracks=tracks,
                               engine_key=self.engine_key),
            rules=() if hidden else pipeline.rules_for(stream_id), similarity=pipeline.similarity,
            make_alert_id=pipeline.new_alert_id,
            seq=pipeline.seq_factory(stream_id) if pipeline.seq_factory is not None and not hidden else None)
        if pipeline.history_factory is not None and not hidden:  # chapters go on across a restart
            self.processor.restore_history(pipeline.history_factory(stream_id))
        # the speech track's voice-activity detector (stateful: one per stream), run off the loop
        self.vad = pipeline.new_vad(stream_id) if self.processor.hears else None
        self._speech_prob = 0.0
        self._speech_progress = asyncio.Event()  # a speech window came back: a file's reader may go on
        self._side_tasks: set[asyncio.Task] = set()  # windows queued from a status change
        self.source: Source | None = None
        self.task: asyncio.Task | None = None
        self._windows_done = asyncio.Event()
        self._windows_done.set()

    # ---------------------------------------------------------------- reading

    @property
    def finals(self) -> list[Caption]:
        """Every track's closed finals (with ``collect_finals``), by start time."""
        return self.processor.finals(None)

    @property
    def state(self) -> StreamState:
        return self.processor.state

    # ---------------------------------------------------------------- events

    def dispatch(self, events: list[Event]) -> None:
        self.p.dispatch(self, events)
        if self.processor.windows_in_flight == 0:
            self._windows_done.set()

    def _on_status(self, status: Status) -> None:
        self.dispatch(self.processor.feed_status(status.state, status.detail, status.code,
                                                 now_ns=self.p.clock(), extra=status.extra))
        if status.state in (StreamState.STALLED, StreamState.RECONNECTING) and self.processor.hears:
            # no more audio is coming for now: the words heard so far are an utterance's end
            self._queue_soon(self.processor.flush_speech())

    async def _queue_windows(self, windows: list[Window]) -> None:
        for w in windows:
            await self.p.worker_for(self, w.track).queue.put(w, live=self.live)

    def _on_drop(self, reason: str) -> None:
        self.dispatch(self.processor.feed_drop(reason, self.p.clock()))

    # ---------------------------------------------------------------- main loop

    def open_source(self) -> Source:
        """Open this stream's source (once); raises BadSourceURL with a clear message."""
        if self.source is not None:
            return self.source
        if self._bad_url is not None or self.spec is None:
            raise self._bad_url or BadSourceURL(f"bad source URL {self.safe_url}")
        cfg = self.p.config
        pre = self.engine.preprocessing

        def transform(img):  # in the source's thread: note the picture's shape, resize for the engine
            self.aspect = img.shape[1] / img.shape[0] if img.ndim == 3 and img.shape[0] else None
            return resize_frame(img, pre)

        # one set of options for every kind: open_source gives each source the ones it takes
        kwargs: dict = {
            "on_status": self._on_status,
            "on_drop": self._on_drop,
            "frame_transform": transform,
            "clock": self.p.clock,
            **source_options(cfg),
            # the decoder converts only the frames the processor keeps (the stream's own limit)
            "max_fps": self.processor.settings.max_ingest_fps,
            "min_side": pre.image_size,  # and scales them to about the engine's size as it converts
        }
        if self.spec.kind is SourceKind.PUSH:
            kwargs["max_queued_frames"] = cfg.ingest.max_queued_frames
        if self.processor.hears:
            kwargs["audio"] = True
        self.source = open_source(self.id, self.spec, **kwargs)
        return self.source

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except StreamcapError as e:
            log.error("stream %s: %s (%s)", self.id, e.detail, self.safe_url)
            self.dispatch(self.processor.fail(e.detail, e.code, self.p.clock()))
        except Exception as e:  # boundary: one stream's bug must not stop the others
            log.exception("stream %s: unexpected failure (%s)", self.id, self.safe_url)
            self.dispatch(self.processor.fail(f"internal error: {type(e).__name__}: {e}", "internal_error",
                                              self.p.clock()))
        finally:
            if self.source is not None:
                await self.source.aclose()

    async def _run(self) -> None:
        source = self.open_source()
        tracks = ", ".join(f"{t.name} {'window %.2fs stride %.2fs' % (t.window_s, t.stride_s) if t.input == 'video' else 'chunk %.2fs' % t.stride_s}"
                           for t in (self.processor.track(n) for n in self.processor.tracks))
        log.info("stream %s: opening %s (%s; %s)", self.id, self.safe_url, "live" if self.live else "file", tracks)
        shape = self.processor.settings.frame_shape
        pre = self.engine.preprocessing
        while True:
            try:
                frame = await source.recv()
            except SourceEnded:
                break
            if isinstance(frame, AudioChunk):
                await self._feed_audio(frame)
                continue
            self.p.metrics.frames_in_total.labels(stream=self.metric_label).inc()
            if not self.processor.sees:
                continue  # a speech-only stream: the picture is not captioned
            if frame.image.shape != shape:
                if self.aspect is None and frame.image.shape[0]:
                    self.aspect = frame.image.shape[1] / frame.image.shape[0]
                frame = Frame(frame.stream, frame.seq, frame.capture_ns, frame.pts_s, resize_frame(frame.image, pre))
            windows = self.processor.feed_frame(frame, self.p.clock())
            if windows:
                self._windows_done.clear()
            self.dispatch(self.processor.take_events())
            for w in windows:
                await self.p.worker_for(self, w.track).queue.put(w, live=self.live)
        # a finite source ended: once its windows are captioned, commit the last scene and report
        # ENDED (flushing earlier would close the stabiliser's segment while results still come);
        # the speech track first hears out its last utterance (one window at a time)
        while True:
            await self._windows_done.wait()
            last = self.processor.flush_speech()
            if not last:
                break
            self._windows_done.clear()
            for w in last:
                await self.p.worker_for(self, w.track).queue.put(w, live=self.live)
        self.dispatch(self.processor.finish(self.p.clock()))

    async def _feed_audio(self, chunk: AudioChunk) -> None:
        """One audio chunk: VAD (off the loop), then the processor; its speech windows queued.
        A file's reader waits while a speech window is out (nothing lost, the same captions on
        every run)."""
        if self.vad is None or not len(chunk.samples):
            return
        self.p.metrics.audio_in_seconds_total.labels(stream=self.metric_label).inc(len(chunk.samples) / AUDIO_RATE)
        p = self.processor
        if not self.live:
            # a file is heard in lockstep: no audio is read while a speech window is out, so the
            # windows (and the captions) depend on the file only, never on the machine's speed
            while p.speech_in_flight:
                self._speech_progress.clear()
                await self._speech_progress.wait()
        probs = await asyncio.get_running_loop().run_in_executor(self.p.vad_executor, self.vad.probabilities,
                                                                 chunk.samples)
        if len(probs):
            self._speech_prob = float(max(probs))
        windows = p.feed_audio(chunk, self._speech_prob, self.p.clock())
        if windows:
            self._windows_done.clear()
        self.dispatch(p.take_events())
        for w in windows:
            await self.p.worker_for(self, w.track).queue.put(w, live=self.live)

    # ---------------------------------------------------------------- engine side

    def on_result(self, window: Window, result: CaptionResult | Transcript, now_ns: int) -> None:
        self.dispatch(self.processor.feed_result(window, result, now_ns))
        if window.audio is not None:
            self._speech_progress.set()
            if self.live:  # the audio that came meanwhile may make the next window due now
                self._queue_soon(self.processor.plan_speech())

    def speech_tick(self, now_ns: int) -> None:
        """A live stream whose audio stopped coming (a muted microphone, a track that ended)
        without its source stalling: once no chunk came for longer than an utterance's end,
        the words heard are committed."""
        p = self.processor
        if self.live and p.hears and p.audio_silent_for(now_ns) > self.p.config.speech.end_silence_s + 0.5:
            self._queue_soon(p.flush_speech())

    def _queue_soon(self, windows: list[Window]) -> None:
        if not windows:
            return
        self._windows_done.clear()
        task = asyncio.get_running_loop().create_task(self._queue_windows(windows))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def on_window_dropped(self, window: Window, reason: DropReason) -> None:
        self.dispatch(self.processor.window_dropped(window, reason, self.p.clock()))
        if window.audio is not None:
            self._speech_progress.set()


class EngineWorker:
    """One engine, its bounded queue and its thread; results go back to their streams' runners."""

    def __init__(self, pipeline: Pipeline, name: str, engine, *, queue_size: int | None = None,
                 max_batch: int | None = None, executor: ThreadPoolExecutor | None = None) -> None:
        self.p = pipeline
        self.name = name
        self.engine = engine
        cfg = pipeline.config.engine
        self.max_batch = max_batch or cfg.max_batch
        self.queue = WindowQueue(queue_size or cfg.queue_size, self._drop,
                                 per_stream=pipeline.config.pipeline.engine_queue_per_stream, streams=self._streams)
        # engines that share an executor take turns on its one thread (each waits for its own call,
        # so their calls alternate in the executor's FIFO: none starves the other)
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streamcap-engine-{name}")
        self.describes = isinstance(engine, DescriberEngine)
        self._cache_seen: dict[str, int] = {}
        self.batches = 0
        self.busy = False
        self.idle = asyncio.Event()

    def _streams(self) -> int:
        """How many streams have a track on this engine (sizes the queue)."""
        return sum(1 for r in self.p.runners.values()
                   if any(self.p.workers.get(t.engine) is self for t in r.processor.settings.tracks))

    def _drop(self, window: Window, reason: DropReason) -> None:
        runner = self.p.runners.get(window.stream)
        if runner is not None:
            runner.on_window_dropped(window, reason)
        else:
            self.p.metrics.windows_dropped_total.labels(stream=window.stream, reason=reason.value).inc()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _transcribe(self, batch: list[Window], owners: list[StreamRunner | None]) -> list[Transcript]:
        """Engine thread: one speech engine call for the speech windows of several streams (one
        encoder batch); each window's language, task and beam from its track's decoding."""
        from streamcap.engine.whisper import SpeechRequest

        requests = []
        for w, runner in zip(batch, owners):
            opts: dict = dict(runner.processor.track(w.track).decoding) if runner is not None else {}
            assert w.audio is not None
            requests.append(SpeechRequest(audio=w.audio, prompt=w.prompt, language=opts.get("language"),
                                          task=str(opts.get("task") or "transcribe"),
                                          num_beams=int(opts.get("num_beams") or 1)))
        return self.engine.transcribe_batch(requests)

    def _caption(self, batch: list[Window], owners: list[StreamRunner | None]) -> list[CaptionResult]:
        """Engine thread: caption a batch; frames are named (stream, runner epoch, seq) for the
        frame cache, so a re-added stream never reuses an old stream's features."""
        groups: dict[tuple, list[int]] = {}  # windows with the same decoding options run together
        keys = []
        for i, (w, runner) in enumerate(zip(batch, owners)):
            epoch = runner.epoch if runner is not None else ("", -1)
            keys.append([(w.stream, epoch, f.seq) for f in w.frames])
            options: dict = {}
            if runner is not None:
                options = {**dict(runner.processor.track(w.track).decoding), **runner.decode}
                if self.describes:  # motion in box heights needs the picture's true shape
                    options = {"aspect": round(runner.aspect, 3)} if runner.aspect else {}
            groups.setdefault(tuple(sorted(options.items(), key=lambda kv: kv[0])), []).append(i)
        results: list[CaptionResult | None] = [None] * len(batch)
        for options, idx in groups.items():
            out = self.engine.caption_batch([[f.image for f in batch[i].frames] for i in idx],
                                            keys=[keys[i] for i in idx], **dict(options))
            for i, r in zip(idx, out):
                results[i] = r
        if self.p.warm_texts is not None:  # embed new caption texts here, off the event loop
            try:
                self.p.warm_texts([r.text for r in results if r is not None and r.text])
            except Exception:  # boundary: alerts must never cost a caption
                log.exception("text embedder failed")
        cache = getattr(self.engine, "cache", None)
        if cache is not None:
            m = self.p.metrics
            engine = "describer" if self.describes else "caption"
            for name, value in (("hit", cache.hits), ("miss", cache.misses), ("evicted", cache.evictions)):
                delta = value - self._cache_seen.get(name, 0)
                if delta:
                    m.frame_cache_total.labels(result=name, engine=engine).inc(delta)
                self._cache_seen[name] = value
            if cache.hits + cache.misses:
                m.frame_cache_hit_ratio.labels(engine=engine).set(cache.hits / (cache.hits + cache.misses))
        return results

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.p.config.engine
        while True:
            batch = await self.queue.get_batch(self.max_batch, cfg.max_wait_ms / 1000.0)
            self.busy = True
            owners = [self.p.runners.get(w.stream) for w in batch]  # a stream removed meanwhile gets nothing
            work = self._transcribe if batch[0].audio is not None else self._caption
            try:
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, work, batch, owners)
                except Exception as e:  # boundary: a failed batch becomes counted drops + a log line
                    log.error("engine %s failed on %d window(s): %s", self.engine.name, len(batch), e)
                    for w in batch:
                        self._drop(w, DropReason.ENGINE_ERROR)
                    continue
                engine_s = time.perf_counter() - t0
                self.p.metrics.engine_latency_seconds.observe(engine_s)
                self.batches += 1
                now = self.p.clock()
                self._observe_overhead(batch, now, engine_s)
                for w, res, owner in zip(batch, results, owners):
                    if owner is not None and self.p.runners.get(w.stream) is owner:
                        owner.on_result(w, res, now)
            finally:
                self.busy = False
                self.idle.set()

    def _observe_overhead(self, batch: list[Window], now_ns: int, engine_s: float) -> None:
        """Glass-to-result and the pipeline's own share of it (minus the engine call), for every
        window of a batch."""
        m = self.p.metrics
        label = "speech" if batch[0].audio is not None else "describer" if self.describes else "caption"
        g2r, overhead = m.window_glass_to_result_seconds.labels(engine=label), m.pipeline_overhead_seconds.labels(engine=label)
        for w in batch:
            newest = w.audio_capture_ns if w.audio is not None else max((f.capture_ns for f in w.frames), default=0)
            if newest <= 0 or newest > now_ns:
                continue
            glass_s = (now_ns - newest) / 1e9
            g2r.observe(glass_s)
            overhead.observe(max(0.0, glass_s - engine_s))

    async def drain(self) -> None:
        while len(self.queue) or self.busy:
            self.idle.clear()
            await self.idle.wait()


class Pipeline:
    """Streams + engine workers. ``run()`` until cancelled (server) or until every finite
    stream has ended (``stop_when_idle=True``, used by ``streamcap caption``).

    Events go to ``sinks`` (name → callable taking an event) and to the plain callbacks
    ``on_caption``/``on_status``/``on_alert``/``on_progress`` (sinks named after them). Hidden
    streams (caption jobs) reach only the metrics sink."""

    def __init__(self, config: Config, engine: CaptionEngine, *, metrics: Metrics,
                 on_caption: CaptionSink | None = None, on_status: StatusSink | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, collect_finals: bool = False,
                 on_progress: Callable[[str, float], None] | None = None, on_alert: AlertSink | None = None,
                 similarity: Similarity | None = None, warm_texts: Callable[[list[str]], object] | None = None,
                 sinks: Mapping[str, EventSink] | None = None, speech_engine=None,
                 vad_factory: Callable[[], object] | None = None, describer: CaptionEngine | None = None,
                 seq_factory: Callable[[str], Iterator[int]] | None = None,
                 history_factory: Callable[[str], list[Caption]] | None = None) -> None:
        self.config = config
        self.engine = engine
        # the scene describer (None: not installed or not wanted): real sources' default picture engine
        self.describer = describer
        # a stream's caption numbers (the caption store's, reserved on disk so they continue after
        # a restart); None: each stream counts from 0
        self.seq_factory = seq_factory
        # a stream's finals from before a restart (the caption store's), for its chapters
        self.history_factory = history_factory
        self.video_engines: dict[str, CaptionEngine] = {"default": engine}
        if describer is not None:
            self.video_engines[DESCRIBER] = describer
        # the speech track's engine (a WhisperEngine) and a maker of per-stream VADs; None: no speech
        self.speech_engine = speech_engine
        self._vad_factory = vad_factory
        self.vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamcap-vad")  # per run()
        self.metrics = metrics
        self.clock = clock
        self.collect_finals = collect_finals
        self.similarity = similarity
        self.warm_texts = warm_texts
        # alert ids: unique across restarts (a random run prefix) and short
        self._alert_prefix = f"{secrets.token_hex(3)}-"
        self._alert_ids = itertools.count(1)
        # alerts are produced only when someone listens for them
        self.on_alert_wanted = on_alert is not None or bool(sinks)
        self.sinks = Sinks(metrics)
        self.sinks.add("metrics", MetricsSink(metrics, label=self._label_of))
        if self.on_alert_wanted:
            self.sinks.add("alert_log", AlertLogSink())
        for name, sink in (sinks or {}).items():
            self.sinks.add(name, sink)
        for name, kind, cb in (("caption", CaptionEvent, on_caption), ("status", StatusEvent, on_status),
                               ("alert", AlertEvent, on_alert), ("progress", ProgressEvent, on_progress)):
            if cb is not None:
                self.sinks.add(name, callback_sink(kind, cb))
        acfg = config.alerts
        self._rules: list[Rule] = []
        if self.on_alert_wanted and acfg.rules:
            self._rules = [r.to_rule(acfg.semantic_threshold) for r in acfg.rules]
            if any(r.description for r in self._rules) and similarity is None:
                raise StreamcapError("alert rules with a description need the text embedder", code="bad_config")
        # the picture engines share one thread: they take turns, and two engines never compete for
        # the cores with two sets of ONNX Runtime threads (speech keeps its own: its calls are long)
        self.video_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamcap-engine-video")
        self.workers: dict[str, EngineWorker] = {"default": EngineWorker(self, "default", engine,
                                                                         executor=self.video_executor)}
        if describer is not None:
            dc = config.describer
            self.workers[DESCRIBER] = EngineWorker(self, DESCRIBER, describer, queue_size=dc.queue_size,
                                                   max_batch=dc.max_batch, executor=self.video_executor)
        if speech_engine is not None:
            sp = config.speech
            self.workers[SPEECH_TRACK] = EngineWorker(self, SPEECH_TRACK, speech_engine, queue_size=sp.queue_size,
                                                      max_batch=sp.max_batch)
        self.runners: dict[str, StreamRunner] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._epochs = itertools.count()
        self._clip_ids = itertools.count(1)
        self.failure: str | None = None

    # ---------------------------------------------------------------- helpers

    def new_alert_id(self) -> str:
        return f"{self._alert_prefix}{next(self._alert_ids)}"

    def new_vad(self, stream_id: str):
        """A voice-activity detector for a stream with a speech track. Raises StreamcapError when
        the pipeline has no speech engine (the models are not installed)."""
        if self.speech_engine is None or self._vad_factory is None:
            raise StreamcapError(f"stream {stream_id}: a speech track needs the speech models "
                                 "(streamcap models install whisper-base silero-vad)", code="bad_config")
        return self._vad_factory()

    def rules_for(self, stream_id: str) -> list[Rule]:
        return [r for r in self._rules if r.applies_to(stream_id)]

    def _label_of(self, stream_id: str) -> str:
        runner = self.runners.get(stream_id)
        return stream_id if runner is None else runner.metric_label

    def worker_for(self, runner: StreamRunner, track: str) -> EngineWorker:
        return self.workers[runner.processor.track(track).engine]

    @property
    def queue(self) -> WindowQueue:
        """The default engine's queue."""
        return self.workers["default"].queue

    @property
    def batches(self) -> int:
        return sum(w.batches for w in self.workers.values())

    def dispatch(self, runner: StreamRunner, events: list[Event]) -> None:
        if events:
            self.sinks.dispatch(events, only=_ALL_STREAM_SINKS if runner.hidden else None)

    # ---------------------------------------------------------------- streams

    def stream_ids(self) -> list[str]:
        return [sid for sid, r in self.runners.items() if not r.hidden]

    def add_stream(self, stream_id: str, url: str, *, hidden: bool = False, collect_finals: bool | None = None,
                   decode: dict | None = None, tracks: tuple[str, ...] | None = None,
                   engine: str | None = None) -> StreamRunner:
        """Add a stream (started at once when the pipeline runs). ``hidden`` streams are jobs:
        their captions and status are not published and they are not listed. ``tracks``
        overrides the stream's configured caption tracks (``video``, ``speech``); ``engine`` its
        picture engine (``auto``, ``caption``, ``describer``). Raises ConfigError when the
        describer is asked for and not loaded."""
        if stream_id in self.runners:
            raise ValueError(f"stream {stream_id!r} already exists")
        runner = StreamRunner(self, stream_id, url, hidden=hidden, collect_finals=collect_finals, decode=decode,
                              tracks=tracks, engine=engine)
        # (this pipeline, n): an engine shared by several pipelines never mixes their frame features
        runner.epoch = (self._alert_prefix, next(self._epochs))
        self.runners[stream_id] = runner
        if self._tg is not None:
            runner.task = self._tg.create_task(runner.run(), name=f"stream-{stream_id}")
        return runner

    async def remove_stream(self, stream_id: str) -> None:
        """Stop a stream and forget it: its task is cancelled (the source closed), its waiting
        windows are dropped (reason ``stream_removed``), results still in flight are ignored and
        its metric series are removed. Raises KeyError for an unknown id."""
        runner = self.runners[stream_id]
        for worker in self.workers.values():
            for w in worker.queue.discard_stream(stream_id):
                runner.on_window_dropped(w, DropReason.STREAM_REMOVED)
        del self.runners[stream_id]
        if runner.task is not None and not runner.task.done():
            runner.task.cancel()
            try:
                await runner.task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # we are being cancelled ourselves
                    raise
        elif runner.source is not None:
            await runner.source.aclose()
        self.sinks.dispatch(runner.processor.close("stream removed", "stream_removed", self.clock()),
                            only=_ALL_STREAM_SINKS if runner.hidden else None)
        if not runner.hidden:
            self.metrics.forget_stream(stream_id)
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
        if runner.spec is None or runner.spec.kind is not SourceKind.PUSH:
            raise ValueError(f"stream {stream_id!r} reads from {runner.safe_url}, not from publishers")
        source = runner.open_source()
        assert isinstance(source, PushSource)
        return source

    def set_stream_decoding(self, stream_id: str, **overrides: object) -> None:
        """Decoding overrides (e.g. ``max_new_tokens``) for the stream's next windows."""
        self.runners[stream_id].decode.update(overrides)

    async def caption_clip(self, path: str, *, decode: dict | None = None,
                           tracks: tuple[str, ...] | None = None) -> list[Caption]:
        """Caption a whole video file through this (running) pipeline, sharing its engines with the
        live streams; returns the finals of every track by start time. Raises SourceError when
        the file cannot be read."""
        if self._tg is None:
            raise RuntimeError("the pipeline is not running")
        stream_id = f"clip:{next(self._clip_ids)}"  # ':' is never in a stream id: no collision with one
        runner = self.add_stream(stream_id, path, hidden=True, collect_finals=True, decode=decode, tracks=tracks)
        try:
            assert runner.task is not None
            await asyncio.shield(runner.task)
        finally:
            if stream_id in self.runners:
                await self.remove_stream(stream_id)
        status = runner.processor.status.current
        if status.state is StreamState.ERROR:
            raise SourceError(status.detail or "could not read the video")
        return runner.processor.finals(None)

    def live_subtitles(self, stream_id: str, track: str = VIDEO_TRACK) -> LiveVttSegmenter | None:
        runner = self.runners.get(stream_id)
        return None if runner is None else runner.processor.live_vtt(track)

    def chapters(self, stream_id: str, since_s: float = 0.0, track: str = VIDEO_TRACK) -> list[Chapter]:
        """The stream's chapters so far (closed finals kept in its history, then the open final)
        still going on at or after ``since_s``. KeyError: unknown stream."""
        p = self.runners[stream_id].processor
        finals = p.history(track)
        current = p.current_final(track)
        if current is not None:
            finals.append(current)
        return chapters_since(chapters_from_finals(finals), since_s)

    def picture(self, stream_id: str, track: str = VIDEO_TRACK
                ) -> tuple[Frame | None, tuple[float, tuple[SceneObject, ...]] | None, float | None]:
        """For snapshots: the stream's latest frame (a copy; None before its first), its newest
        captioned window's ``(end_s, objects)`` (None before one) and the source picture's
        width / height (from its first decoded frame, when frames are stretched to the engine's
        square; else None). KeyError: unknown stream."""
        r = self.runners[stream_id]
        aspect = r.aspect if r.engine.preprocessing.resize == "stretch" else None
        return r.processor.latest_frame(), r.processor.latest_objects(track), aspect

    def health(self) -> dict:
        now = self.clock()
        out = {}
        for sid, r in self.runners.items():
            if r.hidden:
                continue
            p = r.processor
            c = p.counters
            status = p.status.current
            out[sid] = {
                "state": status.state.value, "detail": status.detail, "url": r.safe_url,
                "engine": "describer" if r.engine_key == DESCRIBER else "caption",
                "frames_in": c.frames_in, "windows_captioned": c.windows_captioned,
                "last_frame_age_s": None if c.last_frame_ns is None else round((now - c.last_frame_ns) / 1e9, 3),
                "last_caption_age_s": None if c.last_caption_ns is None else round((now - c.last_caption_ns) / 1e9, 3),
                "last_final": c.last_final,
                "media_s": c.media_s, "last_window_end_s": c.last_window_end_s,
            }
        return out

    # ---------------------------------------------------------------- run

    async def run(self, *, stop_when_idle: bool = False) -> None:
        if self.vad_executor._shutdown:  # a pipeline run again after a previous run()
            self.vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamcap-vad")
        if self.video_executor._shutdown:
            self.video_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamcap-engine-video")
            for w in self.workers.values():
                if w.name != SPEECH_TRACK:
                    w._executor = self.video_executor
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for r in self.runners.values():
                    if r.task is None:
                        r.task = tg.create_task(r.run(), name=f"stream-{r.id}")
                workers = [tg.create_task(w.run(), name=f"engine-{w.name}") for w in self.workers.values()]
                ticker = tg.create_task(self._health_ticks(), name="health")
                if stop_when_idle:
                    await asyncio.gather(*(r.task for r in self.runners.values() if r.task))
                    for w in self.workers.values():
                        await w.drain()
                    for t in (*workers, ticker):
                        t.cancel()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = f"pipeline stopped: {describe_failure(exc)}"
            raise
        finally:
            self._tg = None
            for w in self.workers.values():
                w.shutdown()
            self.vad_executor.shutdown(wait=False, cancel_futures=True)

    async def _health_ticks(self) -> None:
        """Periodic time limits (a stall is the absence of frames: nothing else calls)."""
        period_s = self.config.pipeline.health_tick_s
        while True:
            await asyncio.sleep(period_s)
            now = self.clock()
            for runner in list(self.runners.values()):
                runner.dispatch(runner.processor.tick(now))
                runner.speech_tick(now)


__all__ = ["EngineWorker", "Pipeline", "StreamRunner", "WindowQueue", "describe_failure"]
