"""Alert export to a real MQTT broker (mosquitto on loopback) and a real webhook receiver (aiohttp on
loopback): an alert of the live service arrives on both with the websocket's JSON; a broker down
for 10 s loses nothing (the outbox replays in order once it is back); a webhook answering 500 is
retried until it answers 200, a 400 is given up and counted; no password or Authorization value
reaches the logs. Every wait is bounded; nothing waits on a bare sleep."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest
import websockets
from aiohttp import web

from streamcap.core.events import AlertEvent
from streamcap.core.types import Alert, AlertPhase, Severity
from streamcap.outputs import wire
from streamcap.runtime.alertexport import AlertExporter
from streamcap.runtime.config import load_config
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.service import Service
from tests.helpers.servers import wait_for_line

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
MQTT_PASSWORD = "mqtt-pa55-Zq81"
HOOK_TOKEN = "hook-t0ken-Xv27"


# --- peers ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on ``127.0.0.1:port`` with a conf of its own (persistent sessions kept in
    ``folder``, so a subscriber's queued QoS 1 messages survive a restart); start/stop at will."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = _free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\n")
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        # ready once it says it runs (it logs that after opening its listener)
        try:
            await asyncio.to_thread(wait_for_line, self.proc, " running", 10.0, f"mosquitto on port {self.port}")
        except BaseException:
            await self.stop()  # never leave a broker behind a failed start
            raise

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None


@pytest.fixture
async def broker(tmp_path, require_system):
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        require_system("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(binary, tmp_path)
    await b.start()
    yield b
    await b.stop()


class Subscriber:
    """A real aiomqtt client subscribed to ``TOPIC_PREFIX/#`` at QoS 1; messages go to ``queue``.
    ``persistent``: a fixed client id without a clean session, so the broker queues for it while
    it is away."""

    def __init__(self, port: int, prefix: str, *, persistent: bool = False) -> None:
        self.port, self.prefix, self.persistent = port, prefix, persistent
        self.queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    async def connect(self) -> None:
        self._subscribed.clear()
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._subscribed.wait(), 10)

    async def _read(self) -> None:
        client = aiomqtt.Client("127.0.0.1", self.port, identifier="streamcap-test-sub" if self.persistent else None,
                                clean_session=False if self.persistent else None)
        async with client:
            await client.subscribe(f"{self.prefix}/#", qos=1)
            self._subscribed.set()
            async for message in client.messages:
                self.queue.put_nowait(message)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task

    async def get(self, timeout_s: float = TIMEOUT_S) -> aiomqtt.Message:
        return await asyncio.wait_for(self.queue.get(), timeout_s)


class Webhook:
    """An aiohttp server on loopback: records each request (headers, body) in ``queue`` and answers
    the next status of ``statuses`` (200 once they run out)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[dict[str, str], str]] = asyncio.Queue()
        self.statuses: list[int] = []
        self.requests: list[tuple[dict[str, str], str]] = []
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        record = (dict(request.headers), await request.text())
        self.requests.append(record)
        self.queue.put_nowait(record)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def __aenter__(self) -> Webhook:
        app = web.Application()
        app.router.add_post("/hooks/{secret}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{self.port}/hooks/webhook-id-secret"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def get(self, timeout_s: float = TIMEOUT_S) -> tuple[dict[str, str], str]:
        return await asyncio.wait_for(self.queue.get(), timeout_s)


def _alert(i: int, stream: str = "cam") -> Alert:
    return Alert(id=f"alert-{i}", stream=stream, rule="person", phase=AlertPhase.START, severity=Severity.WARNING,
                 caption_seq=i, start_s=float(i), detail=f"step {i}")


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- the live service ------------------------------------------------------------------------------


async def test_a_service_alert_reaches_mqtt_and_the_webhook_with_the_websocket_json(broker):
    sub = Subscriber(broker.port, "sc")
    await sub.connect()
    async with Webhook() as hook:
        cfg = load_config(None, environ={}, overrides={
            "server": {"port": 0, "persist": False},
            "alerts": {"health": {"enabled": False},
                       "rules": [{"name": "shape", "keywords": ["circle", "square", "triangle"], "cooldown_s": 600}]},
            "export": {"finals": True,
                       "mqtt": [{"url": f"mqtt://streamcap:{MQTT_PASSWORD}@127.0.0.1:{broker.port}",
                                 "topic_prefix": "sc"}],
                       "webhooks": [{"url": hook.url, "headers": {"Authorization": f"Bearer {HOOK_TOKEN}"}}]}})
        async with Service(cfg) as svc:
            assert svc.exporter is not None
            async with websockets.connect(svc.server.ws_url("/ws?streams=demo")) as ws:
                # the first alert on MQTT (finals come too, on their own topic)
                deadline = time.monotonic() + 60
                while True:
                    message = await sub.get(max(0.1, deadline - time.monotonic()))
                    if str(message.topic) == "sc/demo/alerts":
                        break
                    assert str(message.topic) == "sc/demo/finals"
                    assert json.loads(message.payload)["state"] == "final"
                mqtt_text = message.payload.decode()
                alert = json.loads(mqtt_text)
                assert alert["type"] == "alert" and alert["rule"] == "shape" and alert["phase"] == "start"

                # the websocket sent the very same text
                async def ws_alert() -> str:
                    while True:
                        text = await ws.recv()
                        obj = json.loads(text)
                        if obj["type"] == "alert" and obj["id"] == alert["id"] and obj["phase"] == "start":
                            return text
                assert await asyncio.wait_for(ws_alert(), TIMEOUT_S) == mqtt_text

                # and so did the webhook, with its Authorization header
                while True:
                    headers, body = await hook.get()
                    if json.loads(body)["type"] == "alert":
                        break
                assert body == mqtt_text
                assert headers["Authorization"] == f"Bearer {HOOK_TOKEN}"
                assert headers["Content-Type"] == "application/json"
            metrics = svc.metrics
            for name in svc.exporter.destinations:
                assert _sample(metrics, "streamcap_export_messages_total", destination=name, outcome="delivered") >= 2
            assert set(svc.exporter.destinations) == {f"mqtt:127.0.0.1:{broker.port}",
                                                      f"webhook:127.0.0.1:{hook.port}"}
    await sub.close()


# --- a broker that is down -------------------------------------------------------------------------


async def test_a_broker_down_for_ten_seconds_loses_nothing_and_the_outbox_replays_in_order(broker):
    sub = Subscriber(broker.port, "sc", persistent=True)
    await sub.connect()  # its persistent session and subscription outlive the broker restart
    cfg = load_config(None, environ={}, overrides={"export": {
        "retry_initial_s": 0.2, "retry_cap_s": 1.0,
        "mqtt": [{"url": f"mqtt://127.0.0.1:{broker.port}", "topic_prefix": "sc", "timeout_s": 2}]}})
    metrics = Metrics()
    exporter = AlertExporter(cfg.export, metrics)
    name = f"mqtt:127.0.0.1:{broker.port}"
    await exporter.start()
    try:
        exporter(AlertEvent(_alert(0)))  # connected and delivering
        assert (await sub.get()).payload.decode() == wire.encode_alert(_alert(0))
        assert await exporter.wait_drained(TIMEOUT_S)

        await broker.stop()  # the exporter's connection is lost
        await sub.close()
        alerts = [_alert(i) for i in range(1, 7)]
        for a in alerts:
            exporter(AlertEvent(a))
        # ten seconds of outage: nothing leaves the outbox, the exporter keeps retrying with backoff
        down_until = time.monotonic() + 10.0
        dest = exporter.destinations[name]
        while (left := down_until - time.monotonic()) > 0:
            assert exporter.depth() == len(alerts)
            assert _sample(metrics, "streamcap_export_outbox_depth", destination=name) == len(alerts)
            await dest.wait_attempts(dest.attempts + 1, left)  # checked again after every retry
        retries_while_down = _sample(metrics, "streamcap_export_messages_total", destination=name, outcome="retry")
        assert 5 <= retries_while_down <= 30  # backed off (0.2, 0.4, 0.8, then 1 s), not a busy loop

        await broker.start()  # same port
        await sub.connect()
        received = [await sub.get() for _ in alerts]
        assert [m.payload.decode() for m in received] == [wire.encode_alert(a) for a in alerts]  # in order
        assert {str(m.topic) for m in received} == {"sc/cam/alerts"}
        assert await exporter.wait_drained(TIMEOUT_S)
        assert exporter.depth() == 0 and _sample(metrics, "streamcap_export_outbox_depth", destination=name) == 0
        assert _sample(metrics, "streamcap_export_messages_total", destination=name, outcome="delivered") == 7
        assert exporter.destinations[name].connects == 2  # one reconnect, once the broker was back
        assert _sample(metrics, "streamcap_export_dropped_total", destination=name, reason="outbox_full") == 0
        with pytest.raises(TimeoutError):  # nothing else (no duplicates on a clean reconnect)
            await sub.get(0.5)
    finally:
        left = await exporter.aclose()
        await sub.close()
    assert left == {name: 0}


async def test_a_full_outbox_drops_the_oldest_and_counts_it_while_the_broker_is_down(broker):
    await broker.stop()
    cfg = load_config(None, environ={}, overrides={"export": {
        "outbox_size": 3, "retry_initial_s": 0.1, "retry_cap_s": 0.2, "flush_timeout_s": 0.2,
        "mqtt": [{"url": f"mqtt://127.0.0.1:{broker.port}", "topic_prefix": "sc"}]}})
    metrics = Metrics()
    exporter = AlertExporter(cfg.export, metrics)
    name = f"mqtt:127.0.0.1:{broker.port}"
    await exporter.start()
    for i in range(5):
        exporter(AlertEvent(_alert(i)))
    assert _sample(metrics, "streamcap_export_dropped_total", destination=name, reason="outbox_full") == 2
    assert [json.loads(m.payload)["id"] for m in exporter.destinations[name].outbox] == \
        ["alert-2", "alert-3", "alert-4"]
    left = await exporter.aclose()  # the broker is still down: the three are reported as left
    assert left == {name: 3}
    assert _sample(metrics, "streamcap_export_dropped_total", destination=name, reason="shutdown") == 3


# --- webhook answers -------------------------------------------------------------------------------


async def test_a_webhook_500_is_retried_until_200_and_a_400_is_rejected_not_retried():
    async with Webhook() as hook:
        cfg = load_config(None, environ={}, overrides={"export": {
            "retry_initial_s": 0.05, "retry_cap_s": 0.2, "webhooks": [{"url": hook.url, "timeout_s": 5}]}})
        metrics = Metrics()
        exporter = AlertExporter(cfg.export, metrics)
        (name,) = exporter.destinations
        await exporter.start()
        try:
            hook.statuses = [500, 503, 500, 200, 400, 200]
            first, second, third = (wire.encode_alert(_alert(i)) for i in range(3))
            for i in range(3):
                exporter(AlertEvent(_alert(i)))
            assert await exporter.wait_drained(TIMEOUT_S)
            bodies = [body for _, body in hook.requests]
            assert bodies == [first] * 4 + [second, third]  # 3 failures then delivered once; the 400 once
            count = lambda outcome: _sample(metrics, "streamcap_export_messages_total",  # noqa: E731
                                            destination=name, outcome=outcome)
            assert (count("delivered"), count("retry"), count("rejected")) == (2, 3, 1)
            assert _sample(metrics, "streamcap_export_dropped_total", destination=name, reason="rejected") == 1
        finally:
            await exporter.aclose()


# --- secrets ---------------------------------------------------------------------------------------


async def test_the_mqtt_password_and_the_webhook_authorization_never_reach_the_logs(broker, caplog):
    caplog.set_level(logging.DEBUG)
    dead_port = _free_port()
    async with Webhook() as hook:
        hook.statuses = [500, 500, 401]
        cfg = load_config(None, environ={}, overrides={"export": {
            "retry_initial_s": 0.05, "retry_cap_s": 0.1, "flush_timeout_s": 0.5,
            "mqtt": [{"url": f"mqtt://streamcap:{MQTT_PASSWORD}@127.0.0.1:{broker.port}", "topic_prefix": "sc"},
                     {"url": f"mqtt://streamcap:{MQTT_PASSWORD}@127.0.0.1:{dead_port}", "topic_prefix": "sc"}],
            "webhooks": [{"url": hook.url, "headers": {"Authorization": f"Bearer {HOOK_TOKEN}"}},
                         {"name": "dead-hook", "url": f"http://127.0.0.1:{dead_port}/hooks/webhook-id-secret",
                          "headers": {"Authorization": f"Bearer {HOOK_TOKEN}"}}]}})
        metrics = Metrics()
        exporter = AlertExporter(cfg.export, metrics)
        await exporter.start()
        exporter(AlertEvent(_alert(1)))
        live = exporter.destinations[f"mqtt:127.0.0.1:{broker.port}"]
        assert await live.wait_drained(TIMEOUT_S)  # connected with the password, published
        assert await exporter.destinations[f"webhook:127.0.0.1:{hook.port}"].wait_drained(
            TIMEOUT_S)  # 500, 500, then 401: rejected
        deadline = time.monotonic() + TIMEOUT_S
        for dead in (f"mqtt:127.0.0.1:{dead_port}", "dead-hook"):  # each retried at least twice
            d = exporter.destinations[dead]
            while _sample(metrics, "streamcap_export_messages_total", destination=dead, outcome="retry") < 2:
                left = deadline - time.monotonic()
                assert left > 0 and await d.wait_attempts(d.attempts + 1, left), f"{dead} was not retried"
        await exporter.aclose()
    # every line but the test receiver's own access log (it prints the path it was called on)
    text = "\n".join(caplog.handler.format(r) for r in caplog.records if r.name != "aiohttp.access")
    assert "delivery failed" in text and "rejected" in text and "not delivered at shutdown" in text
    for secret in (MQTT_PASSWORD, HOOK_TOKEN, "webhook-id-secret"):
        assert secret not in text
    assert repr(cfg.export).count(MQTT_PASSWORD) == 0 and HOOK_TOKEN not in repr(cfg.export)


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("export", "expected"), [
    ({"mqtt": [{"url": f"http://u:{MQTT_PASSWORD}@host"}]}, "the scheme must be one of mqtt, mqtts"),
    ({"mqtt": [{"url": f"mqtt://u:{MQTT_PASSWORD}@host:99999"}]}, "is not a valid URL"),
    ({"mqtt": [{"url": "mqtt://host", "topic_prefix": "a/#"}]}, "without + # or empty levels"),
    ({"webhooks": [{"url": "ftp://host/x"}]}, "the scheme must be one of http, https"),
    ({"webhooks": [{"url": "http://h/a"}, {"url": "http://h/b"}]}, "give each a distinct `name`"),
    ({"retry_initial_s": 5, "retry_cap_s": 1}, "retry_cap_s must be at least retry_initial_s"),
    ({"full_policy": "drop_random"}, "export.full_policy"),
])
def test_bad_export_settings_are_refused_with_a_clear_message_that_hides_the_password(export, expected):
    from streamcap.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides={"export": export})
    assert expected in str(info.value) and MQTT_PASSWORD not in str(info.value)
