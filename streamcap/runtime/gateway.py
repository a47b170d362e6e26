"""A stateless websocket gateway of the cluster: viewers in, captions from the bus out.

``streamcap gateway --bus redis://…`` serves the viewer routes (``/ws``, the overlay and
dashboard pages, ``/healthz``, ``/metrics``) of a :class:`~streamcap.server.app.Server` whose hub
is fed by one :class:`~streamcap.runtime.bus.BusReader` loop. It keeps no state of its own:
any gateway can serve any client, and a client that loses its gateway reconnects to another
with ``?since=`` (the finals after it come from Redis, then live messages, with no gap and no
duplicate). Acknowledging an alert on one gateway is written to the bus for all the others.
"""

from __future__ import annotations

import asyncio
import logging

from streamcap.core.errors import ConfigError
from streamcap.core.types import StreamState
from streamcap.runtime import bus
from streamcap.runtime.config import Config
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.tasks import cancel_and_wait
from streamcap.runtime.service import access_policy, server_tls
from streamcap.server.app import Server
from streamcap.server.hub import AlertRecord, Hub

log = logging.getLogger(__name__)


class GatewayHub(Hub):
    """A hub whose acknowledgements also go onto the bus (for the other gateways)."""

    writer: bus.BusWriter | None = None

    def ack(self, alert_id: str, by: str, time_s: float) -> AlertRecord:
        record = self._alerts[alert_id]
        fresh = record.acked_by is None
        record = super().ack(alert_id, by, time_s)
        if fresh and self.writer is not None and record.acked_text is not None:
            self.writer.put_ack(record.alert.stream, alert_id, by, time_s, record.acked_text)
        return record


class Gateway:
    """See the module doc. ``async with Gateway(config, bus_url) as gw``."""

    def __init__(self, config: Config, bus_url: str) -> None:
        self.config = config
        self.bus_url = bus_url
        self.metrics = Metrics()
        sc = config.server
        self.hub = GatewayHub(metrics=self.metrics, replay_finals=sc.replay_finals,
                              client_queue_size=sc.client_queue_size, replay_alerts=config.alerts.replay,
                              max_resume_finals=sc.max_resume_finals)
        self.reader: bus.BusReader | None = None
        self.server: Server | None = None
        self._redis = None
        self._task: asyncio.Task | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def url(self, path: str = "/") -> str:
        assert self.server is not None
        return self.server.url(path)

    async def start(self) -> None:
        cfg = self.config
        self._redis = bus.connect(self.bus_url)
        try:
            await self._redis.ping()
        except Exception as exc:
            await self._redis.aclose()
            raise ConfigError(f"cannot reach the bus at {bus.safe_url(self.bus_url)}: {type(exc).__name__}: "
                              f"{exc}") from exc
        self.hub.writer = bus.BusWriter(self._redis, self.metrics)
        self.hub.writer.start()
        self.reader = bus.BusReader(self._redis, self.hub, self.metrics, replay_finals=cfg.server.replay_finals,
                                    replay_alerts=cfg.alerts.replay, max_resume=cfg.server.max_resume_finals)
        await self.reader.refresh_known()
        ssl_context = server_tls(cfg)
        self.server = Server(self.hub, self.metrics, host=cfg.server.host, port=cfg.server.port,
                             health=self.health, streams=self.streams, failure=self.failure,
                             ping_interval_s=cfg.server.heartbeat_s, close_timeout_s=cfg.server.close_timeout_s,
                             access=access_policy(cfg.auth), ssl_context=ssl_context,
                             max_body_bytes=cfg.server.max_body_kb * 1024)
        self.server.prepare_resume = self.reader.prepare_resume
        await self.server.start()
        self._task = asyncio.create_task(self.reader.run(), name="bus-reader")
        log.info("gateway serving on %s, bus %s", self.server.url("/"), bus.safe_url(self.bus_url))

    def streams(self) -> list[str]:
        return sorted(self.reader.known) if self.reader else []

    def health(self) -> dict:
        out = {}
        for sid in self.streams():
            status = self.hub.last_status(sid)
            out[sid] = {"state": StreamState(status.state).value if status else "unknown",
                        "detail": status.detail if status else ""}
        return out

    def failure(self) -> str | None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return f"bus reader stopped: {self._task.exception()!r}"
        return None

    async def wait(self) -> None:
        assert self._task is not None
        await self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task, log, "gateway: the bus reader")
        self._task = None
        if self.server is not None:
            await self.server.stop()
        if self.hub.writer is not None:
            await self.hub.writer.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
