"""The live service: engine + pipeline + hub + HTTP/websocket server, started and stopped as one.

Used by ``streamcap run`` and by integration tests (``async with Service(config) as svc``).
Runs on one event loop; the engine runs in the pipeline's executor thread.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from streamcap.server.auth import AccessPolicy, Scope
from streamcap.runtime.config import Config
from streamcap.engine.base import CaptionEngine, load_describer_from_config, load_engine_from_config
from streamcap.runtime.store import CaptionStore, SeqAllocator
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.pipeline import Pipeline, describe_failure
from streamcap.runtime.sinks import EventSink, HubSink
from streamcap.runtime.speechmodels import demo_source_url, load_speech, wants_speech
from streamcap.core.errors import ConfigError
from streamcap.server.routes.api import ApiRoutes
from streamcap.server.app import Server, tls_context
from streamcap.server.routes.ingest import IngestRoutes
from streamcap.server.routes.whip import WhipRoutes
from streamcap.server.hub import Hub, caption_of
from streamcap.outputs import wire
from streamcap.server.publishers import PushStreams
from streamcap.server.uploads import UploadFolder

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0  # how often stored finals past the retention are dropped


class Service:
    def __init__(self, config: Config, *, engine: CaptionEngine | None = None) -> None:
        self.config = config
        self._engine = engine
        self.metrics = Metrics()
        self.hub = Hub(metrics=self.metrics, replay_finals=config.server.replay_finals,
                       client_queue_size=config.server.client_queue_size, replay_alerts=config.alerts.replay,
                       max_resume_finals=config.server.max_resume_finals)
        self.store: CaptionStore | None = None
        self._prune_task: asyncio.Task | None = None
        self.embedder = None
        self.pipeline: Pipeline | None = None
        self.server: Server | None = None
        self.push_streams: PushStreams | None = None
        self._task: asyncio.Task | None = None
        self.exporter = None  # AlertExporter when [export] names a destination

    @property
    def engine(self) -> CaptionEngine:
        assert self._engine is not None, "service not started"
        return self._engine

    @property
    def port(self) -> int:
        assert self.server is not None, "service not started"
        return self.server.port

    def url(self, path: str = "/") -> str:
        assert self.server is not None
        return self.server.url(path)

    def overlay_url(self, stream: str) -> str:
        assert self.server is not None
        return self.server.overlay_url(stream)

    async def start(self) -> None:
        cfg = self.config
        if self._engine is None:
            self._engine = await asyncio.to_thread(load_engine_from_config, cfg.engine)
        if cfg.server.persist:  # finals and alerts on disk before they go out; seq continues
            self.store = await asyncio.to_thread(CaptionStore, cfg.server.data_path())
            await asyncio.to_thread(self._prune)
            self.hub.use_store(self.store)
            log.info("caption store: %s", self.store.path)
        similarity = warm = None
        if any(r.description for r in cfg.alerts.rules):  # rules by meaning: the offline text embedder
            from streamcap.alerts.embedding import TextEmbedder

            self.embedder = await asyncio.to_thread(TextEmbedder.load, cfg.alerts.embedder_path,
                                                    cache_size=cfg.alerts.embedding_cache_size)
            # the descriptions once, off the loop; captions are embedded in the engine thread
            await asyncio.to_thread(self.embedder.embed, [r.description for r in cfg.alerts.rules if r.description])
            similarity, warm = self.embedder.similarity, self.embedder.embed
        speech_engine = vad_factory = None
        if wants_speech(cfg):
            speech_engine, vad_factory = await asyncio.to_thread(load_speech, cfg)
        # real sources' default picture engine (a few MB, loaded in well under a second), loaded
        # even when no configured stream uses it: streams added through the API may ask for it
        describer = await asyncio.to_thread(load_describer_from_config, cfg.describer, cfg.engine)
        sinks: dict[str, EventSink] = {"hub": HubSink(self.hub)}
        if cfg.export.destinations():  # alerts (and finals) to MQTT brokers and webhooks, each with an outbox
            from streamcap.runtime.alertexport import AlertExporter

            self.exporter = AlertExporter(cfg.export, self.metrics)
            sinks["export"] = self.exporter
        self.pipeline = Pipeline(cfg, self._engine, metrics=self.metrics, sinks=sinks,
                                 similarity=similarity, warm_texts=warm, speech_engine=speech_engine,
                                 vad_factory=vad_factory, describer=describer,
                                 seq_factory=(lambda sid: SeqAllocator(self.store, sid)) if self.store else None,
                                 history_factory=self._stored_finals if self.store else None)
        sources = cfg.sources or []
        if not sources:
            self.pipeline.add_stream("demo", demo_source_url(cfg))
        for s in sources:
            self.pipeline.add_stream(s.id, s.url)
        ssl_context = server_tls(cfg)
        max_body = cfg.server.max_body_kb * 1024
        server = Server(self.hub, self.metrics, host=cfg.server.host, port=cfg.server.port,
                        health=self.pipeline.health, streams=self.pipeline.stream_ids, failure=self.failure,
                        ping_interval_s=cfg.server.heartbeat_s, close_timeout_s=cfg.server.close_timeout_s,
                        access=access_policy(cfg.auth), ssl_context=ssl_context, max_body_bytes=max_body)
        fps = cfg.windows.max_ingest_fps
        # publisher-made push streams: per-token limits and idle expiry, shared by WHIP and /ingest
        self.push_streams = PushStreams(self.pipeline, cfg.ingest, self.metrics, clock=self.pipeline.clock)
        uploads = UploadFolder(cfg.ingest.upload_dir)
        await asyncio.to_thread(uploads.remove_stale)  # left by processes that were killed
        server.extensions += [
            IngestRoutes(server, self.pipeline, cfg.ingest, default_fps=fps, streams=self.push_streams),
            WhipRoutes(server, self.pipeline, cfg.webrtc, max_ingest_fps=fps, streams=self.push_streams,
                       max_pixels=cfg.ingest.max_pixels),
            ApiRoutes(server, self.pipeline, cfg.ingest, max_body_bytes=max_body, subtitle_rules=cfg.subtitles.rules(),
                      admission=cfg.admission, uploads=uploads,
                      want_audio=self.pipeline.speech_engine is not None),
        ]
        self.server = server
        await self.server.start()
        if self.exporter is not None:
            await self.exporter.start()
        self._task = asyncio.create_task(self.pipeline.run(), name="pipeline")
        if self.store is not None:
            self._prune_task = asyncio.create_task(self._prune_every(PRUNE_EVERY_S), name="store-retention")
        self._task.add_done_callback(self._pipeline_done)
        self.push_streams.start()
        log.info("streamcap serving on %s (streams: %s)", self.server.url("/"),
                 ", ".join(self.pipeline.stream_ids()))

    def failure(self) -> str | None:
        """Why the pipeline is not running any more (None while it runs): ``/healthz`` answers
        503 with it and ``streamcap run`` exits non-zero."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        exc = self._task.exception()
        if self.pipeline is not None and self.pipeline.failure:
            return self.pipeline.failure
        return f"pipeline stopped: {describe_failure(exc)}" if exc is not None else "pipeline stopped"

    @staticmethod
    def _pipeline_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pipeline stopped: %r", task.exception())

    async def stop(self) -> None:
        if self.push_streams is not None:
            await self.push_streams.aclose()
        if self._task is not None:
            if self._task.done():  # it died on its own: _pipeline_done logged why
                if not self._task.cancelled():
                    self._task.exception()  # retrieved, so asyncio does not report it again
            else:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
                except Exception:  # already logged by _pipeline_done
                    log.debug("pipeline ended with an error during stop", exc_info=True)
            self._task = None
        if self.server is not None:
            await self.server.stop()
        if self.exporter is not None:  # after the pipeline: its last alerts are in the outboxes
            await self.exporter.aclose()
            self.exporter = None
        if self._prune_task is not None:
            self._prune_task.cancel()
            self._prune_task = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def _prune_every(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await asyncio.to_thread(self._prune)
            except Exception:  # boundary: retention must never stop the server
                log.exception("caption store: pruning failed")

    def _stored_finals(self, stream: str) -> list:
        """A stream's newest stored finals (as many as its chapters keep), oldest first."""
        assert self.store is not None
        try:
            texts = self.store.recent_finals(stream, self.config.pipeline.finals_history)
        except Exception as exc:  # boundary: a broken store costs the old chapters, not the stream
            log.error("caption store: reading %s's finals failed: %s", stream, exc)
            return []
        return [caption_of(wire.decode_server_message(t)) for t in texts]

    def _prune(self) -> None:
        """Drop stored finals and alerts past the retention (at start, then every
        :data:`PRUNE_EVERY_S`)."""
        sc = self.config.server
        assert self.store is not None
        dropped = self.store.prune(max_age_s=sc.retention_days * 86400 or None,
                                   max_finals=sc.retention_finals or None)
        if dropped:
            log.info("caption store: %d finals past the retention dropped", dropped)

    async def wait(self) -> None:
        """Until the pipeline stops (normally: until cancelled)."""
        assert self._task is not None
        await self._task

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def server_tls(cfg: Config) -> ssl.SSLContext | None:
    """The TLS context of ``[server] tls_cert``/``tls_key``, or None; ConfigError when they do
    not load."""
    if not (cfg.server.tls_cert and cfg.server.tls_key):
        return None
    try:
        return tls_context(cfg.server.tls_cert, cfg.server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cfg.server.tls_cert} / key "
                          f"{cfg.server.tls_key}: {exc}") from exc


def access_policy(cfg) -> AccessPolicy:
    """An ``AccessPolicy`` from the ``[auth]`` config section."""
    return AccessPolicy({t.token: Scope(t.scope) for t in cfg.tokens}, public_view=cfg.public_view,
                        anonymous_publish=cfg.anonymous_publish, allowed_origins=tuple(cfg.allowed_origins),
                        public_status=cfg.public_status, public_metrics=cfg.public_metrics)
