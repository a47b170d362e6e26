"""Alerts (and, optionally, final captions) exported to MQTT brokers and webhooks: the async shell
around :class:`streamcap.alerts.outbox.Outbox`.

:class:`AlertExporter` is a sink (:mod:`streamcap.runtime.sinks`): called on the event loop with
each event, it encodes an alert step (or a final caption, with ``[export] finals``) once as the
websocket's wire JSON (:mod:`streamcap.outputs.wire`) and puts it into the outbox of every
destination. It never blocks and never waits: a full outbox drops by its named policy, counted.

Each destination runs one task that owns its outbox: it delivers the head, one message at a time
and in order, and settles it by the peer's answer (at-least-once: a message leaves only when
acknowledged, so a peer may see one twice after a lost acknowledgement; the wire JSON's alert
``id`` and ``phase``, or a caption's ``stream`` and ``seq``, identify repeats).

* :class:`MqttDestination` (aiomqtt): topic ``PREFIX/STREAM/alerts`` (``…/finals``), QoS 1 or 2, so
  the broker's PUBACK/PUBCOMP means delivered. One connection at a time; when it cannot connect or
  loses the connection, the attempt counts as failed and it reconnects after the outbox's backoff.
* :class:`WebhookDestination` (aiohttp): ``POST`` of the JSON; 2xx = delivered; 5xx, 408, 425, 429,
  a timeout or a connection error = retried after the backoff; any other status = rejected (not
  retried, counted).

Metrics: ``streamcap_export_messages_total{destination,outcome}``,
``streamcap_export_outbox_depth{destination}``, ``streamcap_export_dropped_total{destination,reason}``.
Logs name a destination by its configured name (default ``mqtt:HOST:PORT``/``webhook:HOST:PORT``):
never a password, a header value or a webhook path.

``start()`` starts the tasks; ``aclose()`` lets them deliver what is pending for up to
``flush_timeout_s``, then stops them and reports (log and ``shutdown`` drops) what was left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import aiohttp
import aiomqtt

from streamcap.alerts.outbox import Dropped, FullPolicy, Outbox, OutboxMessage, Outcome, RetrySchedule
from streamcap.core.events import AlertEvent, CaptionEvent, Event
from streamcap.core.secrets import redact_text
from streamcap.core.types import CaptionState
from streamcap.outputs import wire
from streamcap.runtime.config import ExportConfig, MqttExportConfig, WebhookExportConfig
from streamcap.runtime.metrics import Metrics

log = logging.getLogger(__name__)

ALERTS = "alerts"
FINALS = "finals"
#: statuses worth retrying besides 5xx: request timeout, too early, too many requests
RETRY_STATUSES = frozenset({408, 425, 429})

Clock = Callable[[], float]


class Destination:
    """One peer and its outbox; subclasses deliver (see the module docstring)."""

    def __init__(self, name: str, outbox: Outbox, metrics: Metrics, clock: Clock) -> None:
        self.name = name
        self.outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._wake = asyncio.Event()  # a message was put
        self._drained = asyncio.Event()  # the outbox is empty
        self.attempts = 0  # delivery and connection attempts settled (delivered, rejected or failed)
        self._attempted = asyncio.Event()  # set after each, for whoever waits on progress
        self._drained.set()
        self._task: asyncio.Task | None = None
        self._down_since: float | None = None
        metrics.export_outbox_depth.labels(destination=name).set(0)

    # --- the sink side (event loop, never blocks) ---------------------------------------------

    def enqueue(self, stream: str, kind: str, payload: str) -> None:
        for dropped in self.outbox.put(stream, kind, payload, self._clock()):
            self._count_drop(dropped)
            count = self.outbox.dropped[dropped.reason]
            if count == 1 or count % 100 == 0:  # not one line per drop through a long outage
                log.warning("export %s: outbox full (%d messages, %s): %d message(s) dropped so far", self.name,
                            self.outbox.capacity, self.outbox.policy.value, count)
        self._depth_changed()
        self._wake.set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"export {self.name}")

    async def wait_drained(self, timeout_s: float) -> bool:
        """Until the outbox is empty (True) or ``timeout_s`` passed (False)."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_attempts(self, n: int, timeout_s: float) -> bool:
        """Until at least ``n`` attempts have settled (True) or ``timeout_s`` passed (False)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.attempts < n:
                    self._attempted.clear()
                    await self._attempted.wait()
        except TimeoutError:
            return False
        return True

    def _attempt_settled(self) -> None:
        self.attempts += 1
        self._attempted.set()

    async def aclose(self, flush_timeout_s: float) -> list[Dropped]:
        """Deliver what is pending for up to ``flush_timeout_s``, stop, and give up on the rest
        (returned, counted as ``shutdown`` drops, logged)."""
        if self._task is not None and self.outbox.depth and flush_timeout_s > 0:
            await self.wait_drained(flush_timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._release()
        left = self.outbox.abandon()
        for dropped in left:
            self._count_drop(dropped)
        self._depth_changed()
        if left:
            log.warning("export %s: %d message(s) not delivered at shutdown (streams: %s)", self.name, len(left),
                        ", ".join(sorted({d.message.stream for d in left})))
        return left

    async def _run(self) -> None:
        raise NotImplementedError

    async def _release(self) -> None:
        """Close what the destination holds (a session)."""

    # --- settling ----------------------------------------------------------------------------

    def _settle(self, message: OutboxMessage, outcome: Outcome, why: str = "") -> None:
        now = self._clock()
        if outcome is Outcome.DELIVERED:
            self.outbox.delivered(message)
            self._up(now)
        elif outcome is Outcome.REJECTED:
            self._count_drop(self.outbox.rejected(message))
            log.warning("export %s: %s of stream %s rejected (%s): not retried", self.name, message.kind,
                        message.stream, why)
            self._up(now)
        else:
            self._failed(now, message, why)
        self._metrics.export_messages_total.labels(destination=self.name, outcome=outcome.value).inc()
        self._depth_changed()
        self._attempt_settled()

    def _failed(self, now: float, message: OutboxMessage | None, why: str) -> None:
        delay = self.outbox.failed(now, message)
        if self._down_since is None:
            self._down_since = now
            log.warning("export %s: delivery failed (%s); %d pending, retrying with backoff (first in %.1f s)",
                        self.name, why, self.outbox.depth, delay)
        else:
            log.debug("export %s: still failing (%s); next attempt in %.1f s", self.name, why, delay)

    def _up(self, now: float) -> None:
        if self._down_since is not None:
            log.info("export %s: delivering again after %.1f s; %d pending", self.name, now - self._down_since,
                     self.outbox.depth)
            self._down_since = None

    def _count_drop(self, dropped: Dropped) -> None:
        self._metrics.export_dropped_total.labels(destination=self.name, reason=dropped.reason.value).inc()

    def _depth_changed(self) -> None:
        depth = self.outbox.depth
        self._metrics.export_outbox_depth.labels(destination=self.name).set(depth)
        if depth == 0:
            self._drained.set()
        else:
            self._drained.clear()

    async def _wait_for_work(self, timeout_s: float | None, *also: asyncio.Future) -> None:
        """Until a message is put, ``timeout_s`` passes or one of ``also`` completes."""
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, *also}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()


class WebhookDestination(Destination):
    """POSTs each message's JSON to a URL; see the module docstring."""

    def __init__(self, config: WebhookExportConfig, outbox: Outbox, metrics: Metrics, clock: Clock) -> None:
        super().__init__(config.destination_name(), outbox, metrics, clock)
        self._config = config
        self._session: aiohttp.ClientSession | None = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        while True:
            self._wake.clear()
            now = self._clock()
            message = self.outbox.due(now)
            if message is None:
                await self._wait_for_work(self.outbox.wait_s(now))
                continue
            outcome, why = await self._post(message)
            self._settle(message, outcome, why)

    async def _post(self, message: OutboxMessage) -> tuple[Outcome, str]:
        assert self._session is not None
        headers = {**self._config.headers, "Content-Type": "application/json"}
        try:
            async with self._session.post(self._config.url, data=message.payload.encode(), headers=headers,
                                          allow_redirects=False) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # boundary: the peer is down or slow
            return Outcome.RETRY, _describe(exc)
        if 200 <= status < 300:
            return Outcome.DELIVERED, f"HTTP {status}"
        if status >= 500 or status in RETRY_STATUSES:
            return Outcome.RETRY, f"HTTP {status}"
        return Outcome.REJECTED, f"HTTP {status}"

    async def _release(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class MqttDestination(Destination):
    """Publishes each message to an MQTT broker; see the module docstring."""

    def __init__(self, config: MqttExportConfig, outbox: Outbox, metrics: Metrics, clock: Clock) -> None:
        super().__init__(config.destination_name(), outbox, metrics, clock)
        self._config = config
        self.connects = 0  # successful connections (the first and every reconnect)

    def topic(self, stream: str, kind: str) -> str:
        return f"{self._config.topic_prefix}/{stream}/{kind}"

    def _client(self) -> aiomqtt.Client:
        cfg = self._config
        parts = urlsplit(cfg.url)
        tls = parts.scheme.lower() == "mqtts"
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return aiomqtt.Client(parts.hostname or "", parts.port or (8883 if tls else 1883), username=username,
                              password=password, identifier=cfg.client_id, timeout=cfg.timeout_s,
                              tls_context=ssl.create_default_context() if tls else None,
                              logger=logging.getLogger(f"{__name__}.paho"))

    async def _run(self) -> None:
        while True:
            backoff = self.outbox.backoff_s(self._clock())
            if backoff > 0:
                await asyncio.sleep(backoff)  # the peer is down: the outbox's schedule says when to try again
            try:
                async with self._client() as client:
                    self.connects += 1
                    log.info("export %s: connected", self.name)
                    await self._pump(client)
            except aiomqtt.MqttError as exc:  # boundary: cannot connect, or the connection was lost
                now = self._clock()
                message = self.outbox.in_flight or self.outbox.due(now)
                if message is not None:  # the head's attempt failed: a retry
                    self._settle(message, Outcome.RETRY, _describe(exc))
                else:
                    self._failed(now, None, _describe(exc))
                    self._attempt_settled()

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish due messages until the connection fails (raises MqttError)."""
        lost = asyncio.ensure_future(_until_disconnected(client))
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                message = self.outbox.due(now)
                if message is None:
                    await self._wait_for_work(self.outbox.wait_s(now), lost)
                    if lost.done():
                        lost.result()
                    continue
                retain = self._config.retain and message.kind == ALERTS
                publish = asyncio.ensure_future(client.publish(
                    self.topic(message.stream, message.kind), message.payload.encode(), qos=self._config.qos,
                    retain=retain, timeout=self._config.timeout_s))
                try:
                    await asyncio.wait({publish, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not publish.done():
                        publish.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await publish
                if not publish.cancelled() and publish.exception() is None:
                    self._settle(message, Outcome.DELIVERED)
                    continue
                if lost.done():
                    lost.result()  # raises why the connection went
                publish.result()  # raises MqttError
        finally:
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await lost


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Raises MqttError when the connection is lost (no subscription: no message ever comes)."""
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("disconnected")


def _describe(exc: BaseException) -> str:
    """A failure for a log line: its type and what the OS or the broker said, never a URL (aiohttp
    quotes the whole URL in some messages, path included), a password or a header value."""
    if isinstance(exc, aiomqtt.MqttError):
        text = str(exc)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        text = exc.os_error.strerror or ""
    elif isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
        text = exc.strerror or ""
    else:
        text = ""
    text = redact_text(text.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AlertExporter:
    """The ``export`` sink and the destinations of ``[export]``; see the module docstring."""

    def __init__(self, config: ExportConfig, metrics: Metrics, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        retry = RetrySchedule(initial_s=config.retry_initial_s, cap_s=config.retry_cap_s)

        def outbox() -> Outbox:
            return Outbox(config.outbox_size, policy=FullPolicy(config.full_policy), retry=retry)

        self.destinations: dict[str, Destination] = {}
        for mqtt in config.mqtt:
            dest: Destination = MqttDestination(mqtt, outbox(), metrics, clock)
            self.destinations[dest.name] = dest
        for hook in config.webhooks:
            dest = WebhookDestination(hook, outbox(), metrics, clock)
            self.destinations[dest.name] = dest

    def __call__(self, event: Event) -> None:
        if isinstance(event, AlertEvent):
            stream, kind, payload = event.alert.stream, ALERTS, wire.encode_alert(event.alert)
        elif (isinstance(event, CaptionEvent) and self.config.finals
              and CaptionState(event.caption.state) is CaptionState.FINAL):
            stream, kind, payload = event.caption.stream, FINALS, wire.encode_caption(event.caption, sent=time.time())
        else:
            return
        for dest in self.destinations.values():
            dest.enqueue(stream, kind, payload)

    def depth(self) -> int:
        """Messages pending over all destinations."""
        return sum(d.outbox.depth for d in self.destinations.values())

    async def start(self) -> None:
        for dest in self.destinations.values():
            dest.start()
        log.info("exporting alerts%s to %s", " and finals" if self.config.finals else "",
                 ", ".join(self.destinations))

    async def wait_drained(self, timeout_s: float) -> bool:
        """Until every outbox is empty (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        for dest in self.destinations.values():
            if not await dest.wait_drained(max(0.0, deadline - time.monotonic())):
                return False
        return True

    async def aclose(self) -> dict[str, int]:
        """Flush for up to ``flush_timeout_s`` (all destinations together), stop; returns how many
        messages each destination had left undelivered."""
        deadline = time.monotonic() + self.config.flush_timeout_s
        left: dict[str, int] = {}
        for name, dest in self.destinations.items():
            left[name] = len(await dest.aclose(max(0.0, deadline - time.monotonic())))
        return left
