"""One stream's worker in cluster mode: its source, engines and processor, writing to the bus.

A :class:`StreamWorker` is what a Ray actor (:mod:`streamcap.runtime.cluster`) runs for one
camera; it needs no Ray itself (tests and ``streamcap worker`` run it in a plain process). On
start it asks the bus where the stream was (:func:`streamcap.runtime.bus.restore`): its caption
numbers continue above every seq a client could have seen and the last final is carried over
to the stabiliser, so a worker restarted on another node picks the stream up where it was.
Engines run in the worker (no Ray Serve hop; docs/scale-out.md has the measurement behind that).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from streamcap.core.secrets import sanitize_url
from streamcap.engine.base import load_describer_from_config, load_engine_from_config
from streamcap.runtime import bus
from streamcap.runtime.config import Config
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.tasks import cancel_and_wait
from streamcap.runtime.pipeline import Pipeline
from streamcap.runtime.speechmodels import load_speech, wants_speech

log = logging.getLogger(__name__)


class StreamWorker:
    """Runs ``stream_id`` from ``url`` with ``config``'s settings, captions onto the bus at
    ``bus_url``. ``async with`` or :meth:`start`/:meth:`stop`."""

    def __init__(self, config: Config, stream_id: str, url: str, bus_url: str, *, engine=None) -> None:
        self.config = config
        self.stream_id = stream_id
        self.url = url
        self.bus_url = bus_url
        self._engine = engine
        self.metrics = Metrics()
        self.pipeline: Pipeline | None = None
        self.writer: bus.BusWriter | None = None
        self.restored: bus.Restored | None = None
        self.exporter = None
        self._redis = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        cfg = self.config
        self._redis = bus.connect(self.bus_url)
        self.restored = await bus.restore(self._redis, self.stream_id)
        log.info("stream %s: continuing at seq %d on %s", self.stream_id, self.restored.next_seq,
                 bus.safe_url(self.bus_url))
        if self._engine is None:
            self._engine = await asyncio.to_thread(load_engine_from_config, cfg.engine)
        describer = await asyncio.to_thread(load_describer_from_config, cfg.describer, cfg.engine)
        speech_engine = vad_factory = None
        if wants_speech(cfg):
            speech_engine, vad_factory = await asyncio.to_thread(load_speech, cfg)
        self.writer = bus.BusWriter(self._redis, self.metrics, finals_maxlen=cfg.server.retention_finals)
        sinks = {"bus": self.writer}
        if cfg.export.destinations():  # each worker exports its own stream's alerts (MQTT, webhooks)
            from streamcap.runtime.alertexport import AlertExporter

            self.exporter = AlertExporter(cfg.export, self.metrics)
            sinks["export"] = self.exporter
            await self.exporter.start()
        first = self.restored.next_seq
        self.pipeline = Pipeline(cfg, self._engine, metrics=self.metrics, sinks=sinks,
                                 speech_engine=speech_engine, vad_factory=vad_factory, describer=describer,
                                 seq_factory=lambda sid: itertools.count(first))
        engine = next((s.engine for s in cfg.sources if s.id == self.stream_id), None)
        runner = self.pipeline.add_stream(self.stream_id, self.url, engine=engine)
        if self.restored.last_final is not None:
            runner.processor.carry_over(self.restored.last_final)
        await bus.register_streams(self._redis, [self.stream_id])
        self.writer.start()
        self._task = asyncio.create_task(self.pipeline.run(), name=f"worker-{self.stream_id}")
        log.info("stream %s: worker started (%s)", self.stream_id, sanitize_url(self.url))

    def info(self) -> dict:
        """What the controller and tests see: the stream, seq it started from, finals written."""
        assert self.writer is not None and self.restored is not None
        health = self.pipeline.health().get(self.stream_id, {}) if self.pipeline else {}
        return {"stream": self.stream_id, "started_at_seq": self.restored.next_seq,
                "carried_seq": self.restored.last_final.seq if self.restored.last_final else None,
                "written": self.writer.written, "last_final_seq": self.writer.last_final_seq,
                "queued": self.writer.queued, "state": health.get("state"),
                "failure": self.failure()}

    def failure(self) -> str | None:
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return (self.pipeline.failure if self.pipeline else None) or "pipeline stopped"

    async def wait(self) -> None:
        assert self._task is not None
        await self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task, log, f"stream {self.stream_id}: the pipeline")
        self._task = None
        if self.writer is not None:
            await self.writer.aclose()
        if self.exporter is not None:
            await self.exporter.aclose()
            self.exporter = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> StreamWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
