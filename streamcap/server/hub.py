"""Fan-out of captions and statuses to websocket clients, without sockets.

The :class:`Hub` encodes each message once with :mod:`streamcap.outputs.wire` and appends the same
string to the bounded outgoing queue of every client subscribed to its stream. Publishing never
waits: a client whose queue is full is marked for disconnection (reason ``slow_client``), its
queue is discarded and it receives nothing more, so one slow reader can neither block the
publisher nor delay the other clients. The server's per-client sender task drains a
:class:`ClientHandle` with :meth:`ClientHandle.get`; the connection handler also awaits
:meth:`ClientHandle.wait_closed`, so it closes the connection when the handle says so even
while a send is stuck on a peer that does not read.

A status's detail goes out through :func:`streamcap.core.secrets.redact_text`: whatever a source
put there (an error message quoting its URL), no viewer sees a credential.

The hub also keeps, per stream, the last status and the most recent finals, and the most recent
alerts (the latest step of each, with who acknowledged it); a client that joins (or widens its
subscription) gets those first (replay).

Threading: every Hub and ClientHandle method must be called from the event loop thread (or,
in tests, from one thread with no loop at all). Nothing here awaits except
:meth:`ClientHandle.get` and :meth:`ClientHandle.wait_closed`, the only methods that need a
running loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from streamcap.core.errors import ErrorCode
from streamcap.core.secrets import redact_text
from streamcap.outputs import wire
from streamcap.runtime.metrics import Metrics
from streamcap.core.types import (
    Alert,
    AlertPhase,
    Caption,
    CaptionState,
    Severity,
    Status,
    StreamState,
)

logger = logging.getLogger(__name__)


class DisconnectReason(str, Enum):
    """Why the server ends a client's connection."""

    SLOW_CLIENT = "slow_client"  # its outgoing queue was full
    SERVER_SHUTDOWN = "server_shutdown"


@dataclass(slots=True)
class AlertRecord:
    alert: Alert  # its latest step
    text: str  # encoded once
    acked_by: str | None = None
    acked_at: float | None = None  # wall clock, unix s
    acked_text: str | None = None


@dataclass(frozen=True, slots=True)
class _Final:
    caption: Caption
    text: str  # encoded once


def _alert_of(msg: wire.AlertMsg) -> Alert:
    """An alert step read back from its stored wire message."""
    return Alert(msg.id, msg.stream, msg.rule, AlertPhase(msg.phase), Severity(msg.severity), msg.caption_seq,
                 msg.start, msg.end, msg.detail)


def caption_of(msg: wire.CaptionMsg) -> Caption:
    """A caption read back from its wire message (a gateway's bus, a stream worker's restart)."""
    return Caption(msg.stream, msg.seq, CaptionState(msg.state), msg.text, msg.start, msg.end, msg.score,
                   msg.window, track=msg.track, words=msg.words, objects=msg.objects)


def status_of(msg: wire.StatusMsg) -> Status:
    return Status(msg.stream, StreamState(msg.state), msg.detail, msg.code)


def alert_of(msg: wire.AlertMsg) -> Alert:
    return _alert_of(msg)


class ClientHandle:
    """One client's subscription and bounded outgoing queue of encoded messages."""

    def __init__(self, client_id: int, streams: frozenset[str] | None, capacity: int) -> None:
        self.id = client_id
        self._streams = streams
        self._capacity = capacity
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()  # set while the queue is non-empty or the handle closed
        self._closed = asyncio.Event()
        self._close_reason: DisconnectReason | None = None
        # per stream, the newest seq a resume already gave this client: live captions at or
        # below it are not sent again (a gateway's resume from the bus overlaps its live feed)
        self._floors: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<ClientHandle {self.id} streams={self.streams} queued={len(self._queue)}>"

    @property
    def streams(self) -> frozenset[str] | None:
        """The subscribed streams; ``None`` means all streams."""
        return self._streams

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def close_reason(self) -> DisconnectReason | None:
        """Set once the hub (or server) wants this client gone; the queue is then empty."""
        return self._close_reason

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    def wants(self, stream: str) -> bool:
        return self._streams is None or stream in self._streams

    def get_nowait(self) -> str | None:
        """The next queued message, or None when the queue is empty or the handle closed."""
        if self.closed or not self._queue:
            return None
        text = self._queue.popleft()
        if not self._queue:
            self._ready.clear()
        return text

    async def get(self) -> str | None:
        """Wait for the next message; None once the handle is closed (stop sending, close)."""
        while not self.closed and not self._queue:
            await self._ready.wait()
        return self.get_nowait()

    async def wait_closed(self) -> DisconnectReason:
        """Return once the handle is closed, even while a send is blocked on the socket."""
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    # Called by the Hub only.

    def _grow(self, extra: int) -> None:
        """Room for a resume's finals on top of the usual queue (they are sent first)."""
        self._capacity += extra

    def _offer(self, text: str) -> bool:
        """Queue a message; False when the queue is full (the caller drops the client)."""
        if len(self._queue) >= self._capacity:
            return False
        self._queue.append(text)
        self._ready.set()
        return True

    def _close(self, reason: DisconnectReason) -> int:
        """Mark closed, discard the queue and wake the sender; returns messages discarded."""
        discarded = len(self._queue)
        self._queue.clear()
        if self._close_reason is None:
            self._close_reason = reason
        self._ready.set()
        self._closed.set()
        return discarded


class Hub:
    """Delivers published captions and statuses to subscribed clients; see the module doc."""

    def __init__(
        self, *, metrics: Metrics, replay_finals: int = 20, client_queue_size: int = 256,
        replay_alerts: int = 50, store=None, max_resume_finals: int = 1000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if replay_finals < 0:
            raise ValueError(f"replay_finals must be >= 0, got {replay_finals}")
        if client_queue_size < 1:
            raise ValueError(f"client_queue_size must be >= 1, got {client_queue_size}")
        self._metrics = metrics
        self._wall_clock = wall_clock  # a caption's "sent" time
        self._replay_finals = replay_finals
        self._client_queue_size = client_queue_size
        self._clients: dict[int, ClientHandle] = {}
        # who gets a stream's messages without asking every client: those subscribed to all
        # streams, and per stream those subscribed to it by name
        self._all: dict[int, ClientHandle] = {}
        self._by_stream: dict[str, dict[int, ClientHandle]] = {}
        self._ids = itertools.count(1)
        self._finals: dict[str, deque[_Final]] = {}
        self._last_status: dict[str, tuple[Status, str]] = {}
        self._replay_alerts = replay_alerts
        self._alerts: OrderedDict[str, AlertRecord] = OrderedDict()
        # the caption store (streamcap.runtime.store.CaptionStore) or None: finals and alert steps
        # are written there before they go out; clients resume from it with since
        self._store = None
        self._max_resume = max_resume_finals
        if store is not None:
            self.use_store(store)

    def use_store(self, store) -> None:
        """Keep finals and alert steps in ``store`` (a CaptionStore) from now on; the alerts it
        holds are known again (replayed to new clients, acknowledgeable)."""
        self._store = store
        for alert_id, text, by, at, acked_text in store.recent_alerts(self._replay_alerts):
            self._alerts[alert_id] = AlertRecord(_alert_of(wire.decode_server_message(text)), text, by, at,
                                                 acked_text)

    # --- clients ------------------------------------------------------------------------------

    @property
    def clients(self) -> tuple[ClientHandle, ...]:
        return tuple(self._clients.values())

    def add_client(self, streams: Iterable[str] | None = None, since: Mapping[str, int] | None = None,
                   resumed: Mapping[str, list[str]] | None = None) -> ClientHandle:
        """Register a client (``None`` = all streams) with its queue primed by the replay.
        ``since``: per stream, the last seq the client has; it gets every stored final after it
        (oldest first, up to ``max_resume_finals``) instead of the recent ones. ``resumed``:
        those finals already fetched (a gateway reads them from its bus before it calls this),
        per stream of ``since``, oldest first; the store is not asked then."""
        subscribed = None if streams is None else frozenset(streams)
        client = ClientHandle(next(self._ids), subscribed, self._client_queue_size)
        self._clients[client.id] = client
        self._index(client)
        self._metrics.clients.set(len(self._clients))
        # a stream named in since but not subscribed to is not replayed (the client gets nothing of
        # it); with no store a since is a plain connect (the recent finals: a client drops the
        # ones it has by seq)
        can_resume = self._store is not None or resumed is not None
        since = {k: v for k, v in (since or {}).items() if client.wants(k)} if can_resume else {}
        self._prime(client, self._replay_streams(subscribed) | frozenset(since), since, resumed)
        return client

    def remove_client(self, client: ClientHandle) -> None:
        """Forget a client (idempotent). Its handle stays closed if it was."""
        if self._clients.pop(client.id, None) is not None:
            self._unindex(client)
            self._metrics.clients.set(len(self._clients))

    def set_subscription(self, client: ClientHandle, streams: Iterable[str] | None,
                         since: Mapping[str, int] | None = None,
                         resumed: Mapping[str, list[str]] | None = None) -> None:
        """Replace a client's subscription; streams it did not have before are replayed, and the
        streams in ``since`` resumed after the seq given (as in :meth:`add_client`)."""
        if client.closed or client.id not in self._clients:
            return
        before = client.streams
        after = None if streams is None else frozenset(streams)
        self._unindex(client)
        client._streams = after
        self._index(client)
        if before is None:
            added: frozenset[str] | None = frozenset()
        elif after is None:
            added = frozenset(self._known_streams() - before)
        else:
            added = after - before
        can_resume = self._store is not None or resumed is not None
        since = {k: v for k, v in (since or {}).items() if client.wants(k)} if can_resume else {}
        self._prime(client, added | frozenset(since), since, resumed)

    def send_to(self, client: ClientHandle, text: str) -> bool:
        """Queue a reply (pong, error) for one client; a full queue drops it like a publish."""
        return self._deliver(client, text)

    def close_client(self, client: ClientHandle, reason: DisconnectReason) -> None:
        """Ask the server to end one client's connection (its sender wakes and gets None)."""
        client._close(reason)
        self.remove_client(client)

    def close_all(self, reason: DisconnectReason) -> None:
        for client in self.clients:
            self.close_client(client, reason)

    # --- publishing ---------------------------------------------------------------------------

    def publish_caption(self, caption: Caption, text: str | None = None) -> int:
        """Send a caption to its stream's subscribers; finals are kept for replay.
        ``text``: its wire message when already encoded (a gateway passes on the bus's).
        Returns how many clients it was queued for."""
        if text is None:
            text = wire.encode_caption(caption, sent=self._wall_clock())
        state = CaptionState(caption.state)
        self._metrics.captions_total.labels(stream=caption.stream, state=state.value).inc()
        if state is CaptionState.FINAL and self._store is not None:
            self._persist(self._store.add_final, caption, text)  # on disk before anyone sees it
        if state is CaptionState.FINAL and self._replay_finals > 0:
            finals = self._finals.get(caption.stream)
            if finals is None:
                finals = self._finals[caption.stream] = deque(maxlen=self._replay_finals)
            finals.append(_Final(caption, text))
        return self._fan_out(caption.stream, text, caption.seq)

    def seed(self, caption: Caption | None = None, text: str | None = None, *, status: Status | None = None,
             alert: Alert | None = None, acked: tuple[str, float, str] | None = None) -> None:
        """Remember a final, a status or an alert step (with ``acked``: who, when, its message)
        for replay without sending it to anyone (a gateway learning a stream's recent past
        from its bus before clients want it)."""
        if caption is not None and self._replay_finals > 0:
            finals = self._finals.setdefault(caption.stream, deque(maxlen=self._replay_finals))
            finals.append(_Final(caption, text if text is not None else wire.encode_caption(caption)))
        if status is not None:
            self._last_status[status.stream] = (status, text if text is not None else wire.encode_status(status))
        if alert is not None:
            record = AlertRecord(alert, text if text is not None else wire.encode_alert(alert))
            if acked is not None:
                record.acked_by, record.acked_at, record.acked_text = acked
            self._alerts.pop(alert.id, None)
            self._alerts[alert.id] = record
            while len(self._alerts) > self._replay_alerts:
                self._alerts.popitem(last=False)

    def publish_status(self, status: Status) -> int:
        """Send a status to its stream's subscribers and remember it as the stream's latest."""
        detail = redact_text(status.detail)  # a source's error text may quote its URL
        if detail != status.detail:
            status = dataclasses.replace(status, detail=detail)
        text = wire.encode_status(status)
        self._last_status[status.stream] = (status, text)
        up = 1 if StreamState(status.state) is StreamState.LIVE else 0
        self._metrics.stream_up.labels(stream=status.stream).set(up)
        return self._fan_out(status.stream, text)

    def publish_alert(self, alert: Alert, text: str | None = None) -> int:
        """Send an alert step to its stream's subscribers and keep its latest step for replay
        (the ``replay_alerts`` most recently changed alerts)."""
        if text is None:
            text = wire.encode_alert(alert)
        self._metrics.alerts_total.labels(rule=alert.rule, phase=AlertPhase(alert.phase).value).inc()
        if self._store is not None:
            self._persist(self._store.put_alert, alert, text)
        record = self._alerts.pop(alert.id, None)
        if record is None:
            record = AlertRecord(alert, text)
        else:
            record.alert, record.text = alert, text
        self._alerts[alert.id] = record
        while len(self._alerts) > self._replay_alerts:
            self._alerts.popitem(last=False)
        return self._fan_out(alert.stream, text)

    def ack(self, alert_id: str, by: str, time_s: float) -> AlertRecord:
        """Record who acknowledged an alert and tell its stream's subscribers. The first
        acknowledgement stands (acknowledging again changes nothing). KeyError: unknown id."""
        record = self._alerts[alert_id]
        if record.acked_by is None:
            record.acked_by, record.acked_at = by, time_s
            self._metrics.alerts_acked_total.inc()
            record.acked_text = wire.encode_acked(alert_id, by, time_s)
            if self._store is not None:
                self._persist(self._store.ack_alert, alert_id, by, time_s, record.acked_text)
            self._fan_out(record.alert.stream, record.acked_text)
        return record

    def apply_ack(self, alert_id: str, by: str, time_s: float, text: str) -> bool:
        """An acknowledgement made elsewhere (another gateway, read from the bus): recorded and
        sent to the stream's subscribers unless this hub already has one. False: unknown or
        already acknowledged."""
        record = self._alerts.get(alert_id)
        if record is None or record.acked_by is not None:
            return False
        record.acked_by, record.acked_at, record.acked_text = by, time_s, text
        self._metrics.alerts_acked_total.inc()
        self._fan_out(record.alert.stream, text)
        return True

    def recent_alerts(self) -> tuple[AlertRecord, ...]:
        return tuple(self._alerts.values())

    def last_status(self, stream: str) -> Status | None:
        entry = self._last_status.get(stream)
        return None if entry is None else entry[0]

    def recent_finals(self, stream: str) -> tuple[Caption, ...]:
        return tuple(f.caption for f in self._finals.get(stream, ()))

    # --- internals ----------------------------------------------------------------------------

    def _known_streams(self) -> frozenset[str]:
        return (frozenset(self._last_status) | frozenset(self._finals)
                | frozenset(r.alert.stream for r in self._alerts.values()))

    def _replay_streams(self, subscribed: frozenset[str] | None) -> frozenset[str]:
        known = self._known_streams()
        return known if subscribed is None else known & subscribed

    def _persist(self, write, *args) -> None:
        """A store write that fails (disk full, a broken file) is logged and counted; the
        message still goes out."""
        try:
            write(*args)
        except Exception as exc:  # boundary: the store must never cost a broadcast
            self._metrics.sink_errors_total.labels(sink="store").inc()
            logger.error("caption store: %s failed: %s", getattr(write, "__name__", "write"), exc)

    def _prime(self, client: ClientHandle, streams: Iterable[str], since: Mapping[str, int] | None = None,
               prefetched: Mapping[str, list[str]] | None = None) -> None:
        """Queue the last status of each stream, then each stream's recent finals, oldest
        first (streams sorted by id). At most half the queue is used; beyond that the oldest
        finals are left out, so a new client never starts out close to being dropped. A stream
        in ``since`` (a resuming client) gets its stored finals after that seq instead, all of
        them up to ``max_resume_finals`` (the queue grows to hold them); if more are stored, an
        ``error`` (``resume_truncated``) says the seq to resume from."""
        since = since or {}
        resumed: list[str] = []
        if since:
            resumed = self._resume(client, since, prefetched)
        statuses: list[str] = []
        finals: list[list[str]] = []
        for stream in sorted(streams):
            entry = self._last_status.get(stream)
            if entry is not None:
                statuses.append(entry[1])
            if stream not in since:
                finals.append([f.text for f in self._finals.get(stream, ())])
        budget = client.capacity // 2
        finals_budget = max(0, budget - len(statuses))
        while sum(len(f) for f in finals) > finals_budget:
            longest = max(finals, key=len)  # trim the stream with most finals, oldest first
            longest.pop(0)
        messages = statuses[:budget] + [text for group in finals for text in group] + resumed
        budget += len(resumed)
        wanted = set(streams)
        for record in self._alerts.values():  # then the recent alerts, oldest first
            if record.alert.stream in wanted and len(messages) < budget:
                messages.append(record.text)
                if record.acked_text is not None:
                    messages.append(record.acked_text)
        for text in messages:
            if not self._deliver(client, text):
                break

    def _resume(self, client: ClientHandle, since: Mapping[str, int],
                prefetched: Mapping[str, list[str]] | None = None) -> list[str]:
        """The stored finals after each stream's ``since`` (the client's queue is made room for).
        The client's floor per stream is the newest seq it has then (live duplicates skipped)."""
        out: list[str] = []
        for stream in sorted(since):
            client._floors[stream] = since[stream]
            if prefetched is not None:
                texts = list(prefetched.get(stream, ()))[: self._max_resume + 1]
            elif self._store is None:
                break
            else:
                texts = None
            try:
                if texts is None:
                    texts = self._store.finals_after(stream, since[stream], self._max_resume + 1)
            except Exception as exc:  # boundary: a broken store costs the resume, not the client
                self._metrics.sink_errors_total.labels(sink="store").inc()
                logger.error("caption store: resume of %s failed: %s", stream, exc)
                continue
            truncated = len(texts) > self._max_resume
            texts = texts[: self._max_resume]
            if texts:
                last = wire.decode_server_message(texts[-1])
                client._floors[stream] = max(client._floors[stream], getattr(last, "seq", -1))
                if truncated:
                    texts.append(wire.encode_error(
                        ErrorCode.RESUME_TRUNCATED,
                        f"more finals of {stream} after seq {last.seq}: reconnect with since={stream}:{last.seq}"))
            out += texts
        client._grow(len(out))
        return out

    def _index(self, client: ClientHandle) -> None:
        if client.streams is None:
            self._all[client.id] = client
        else:
            for stream in client.streams:
                self._by_stream.setdefault(stream, {})[client.id] = client

    def _unindex(self, client: ClientHandle) -> None:
        self._all.pop(client.id, None)
        for stream in client.streams or ():
            subs = self._by_stream.get(stream)
            if subs is not None:
                subs.pop(client.id, None)
                if not subs:
                    del self._by_stream[stream]

    def wanted_streams(self) -> frozenset[str] | None:
        """The streams some client wants; None when a client wants every stream."""
        return None if self._all else frozenset(self._by_stream)

    def prime_stream(self, stream: str) -> None:
        """Give the clients that want ``stream`` its replay (last status, recent finals, alerts):
        a gateway learnt it after they subscribed, so they have nothing of it yet."""
        for client in self.subscribers(stream):
            self._prime(client, [stream])

    def subscribers(self, stream: str) -> list[ClientHandle]:
        """The clients that get ``stream``'s messages (a copy: delivering may drop some)."""
        named = self._by_stream.get(stream)
        return [*self._all.values(), *named.values()] if named else list(self._all.values())

    def _fan_out(self, stream: str, text: str, seq: int | None = None) -> int:
        delivered = 0
        for client in self.subscribers(stream):
            if seq is not None and client._floors and seq <= client._floors.get(stream, -1):
                continue  # a resume gave it this one already
            if self._deliver(client, text):
                delivered += 1
        return delivered

    def _deliver(self, client: ClientHandle, text: str) -> bool:
        if client.closed:
            return False
        if client._offer(text):
            return True
        discarded = client._close(DisconnectReason.SLOW_CLIENT)
        self.remove_client(client)
        reason = DisconnectReason.SLOW_CLIENT.value
        self._metrics.clients_dropped_total.labels(reason=reason).inc()
        self._metrics.messages_dropped_total.labels(reason=reason).inc(discarded + 1)
        logger.warning(
            "client %d: dropped, outgoing queue full (%d messages); it fell behind",
            client.id,
            client.capacity,
        )
        return False
