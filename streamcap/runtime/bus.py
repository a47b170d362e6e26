"""The cluster's caption log and bus on Redis Streams: what stream workers write and gateways read.

Keys, per stream (the ``{stream}`` hash tag keeps one stream's keys on one Redis Cluster slot):

- ``sc:{ID}:finals`` — every final caption, entry ID ``SEQ-0`` (the caption's seq), field ``m``
  the wire message as clients get it. Redis refuses an ID at or below the newest, so a stale
  writer (a worker that was replaced but still runs) cannot interleave old numbers. Trimmed
  with ``MAXLEN ~ finals_maxlen`` (``server.retention_finals``). Clients resume from it
  (``?since=``): ``XRANGE (SEQ-0 +``.
- ``sc:{ID}:alerts`` — alert steps (``k=alert``) and acknowledgements (``k=acked``), auto IDs,
  ``MAXLEN ~ alerts_maxlen``.
- ``sc:{ID}:live`` — partial captions (``k=caption``, ``q`` its seq) and statuses
  (``k=status``), auto IDs, short (``MAXLEN ~ live_maxlen``): nobody resumes partials.
- ``sc:streams`` — the set of stream ids (the controller's wanted set; workers add their own).

A worker restarting elsewhere reads where its stream was (:func:`restore`): the next seq is one
above the newest seq any client could have seen (the newest final or partial in Redis), and the
newest final is carried over to the stabiliser so the same words are not published twice.

:class:`BusWriter` is a worker's sink: events are encoded on the event loop, queued (bounded;
full → the oldest queued message is dropped, counted as ``bus_full``) and written in pipelined
batches by one task, which retries while Redis is away. :class:`BusReader` is a gateway's single
``XREAD`` loop over the keys of the streams its clients want, fanning out in-process through a
:class:`~streamcap.server.hub.Hub`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from streamcap.core.events import AlertEvent, CaptionEvent, Event, StatusEvent
from streamcap.core.secrets import redact_text, sanitize_url
from streamcap.core.types import Caption, CaptionState
from streamcap.outputs import wire
from streamcap.runtime.metrics import Metrics
from streamcap.server.hub import alert_of, caption_of, status_of

log = logging.getLogger(__name__)

PREFIX = "sc"
STREAMS_KEY = f"{PREFIX}:streams"


def finals_key(stream: str) -> str:
    return f"{PREFIX}:{{{stream}}}:finals"


def alerts_key(stream: str) -> str:
    return f"{PREFIX}:{{{stream}}}:alerts"


def live_key(stream: str) -> str:
    return f"{PREFIX}:{{{stream}}}:live"


def entry_id(seq: int) -> str:
    """A final's entry ID: its seq (cluster seqs start at 1; Redis has no ID 0-0)."""
    if seq < 1:
        raise ValueError(f"a final's seq on the bus must be >= 1, got {seq}")
    return f"{seq}-0"


def seq_of(entry: str) -> int:
    return int(entry.split("-", 1)[0])


def connect(url: str) -> aioredis.Redis:
    """A redis-py asyncio client for ``redis://[:password@]host:port/db`` (strings decoded)."""
    return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=10,
                                   socket_connect_timeout=5, retry_on_timeout=True)


def safe_url(url: str) -> str:
    """The bus URL fit for a log line (no password)."""
    return sanitize_url(url)


@dataclass(frozen=True, slots=True)
class Restored:
    """Where a stream was on the bus: the seq to continue from and its newest final."""

    next_seq: int
    last_final: Caption | None


async def restore(r: aioredis.Redis, stream: str) -> Restored:
    newest = 0
    last_final = None
    finals = await r.xrevrange(finals_key(stream), count=1)
    if finals:
        entry, fields = finals[0]
        newest = seq_of(entry)
        msg = wire.decode_server_message(fields["m"])
        from streamcap.server.hub import caption_of
        last_final = caption_of(msg)
    for _, fields in await r.xrevrange(live_key(stream), count=64):
        if "q" in fields:
            newest = max(newest, int(fields["q"]))
            break
    return Restored(newest + 1, last_final)


@dataclass(frozen=True, slots=True)
class _Out:
    key: str
    fields: dict[str, str]
    entry: str  # "*" or a final's SEQ-0
    maxlen: int
    final: bool


class BusWriter:
    """A stream worker's sink onto the bus (see the module doc). ``sink`` never blocks."""

    def __init__(self, r: aioredis.Redis, metrics: Metrics, *, queue_size: int = 4096, batch: int = 256,
                 finals_maxlen: int = 100_000, alerts_maxlen: int = 1000, live_maxlen: int = 256,
                 retry_s: float = 0.5) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._r = r
        self._metrics = metrics
        self._queue: deque[_Out] = deque()
        self._size = queue_size
        self._batch = batch
        self._maxlen = {"finals": finals_maxlen, "alerts": alerts_maxlen, "live": live_maxlen}
        self._retry_s = retry_s
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self.written = 0
        self.last_final_seq = 0

    # --- the sink -----------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if isinstance(event, CaptionEvent):
            c = event.caption
            text = wire.encode_caption(c, sent=time.time())
            if CaptionState(c.state) is CaptionState.FINAL:
                self._put(_Out(finals_key(c.stream), {"m": text}, entry_id(c.seq),
                               self._maxlen["finals"], True))
            else:
                self._put(_Out(live_key(c.stream), {"k": "caption", "q": str(c.seq), "m": text}, "*",
                               self._maxlen["live"], False))
        elif isinstance(event, StatusEvent):
            s = event.status
            detail = redact_text(s.detail)
            status = s if detail == s.detail else type(s)(s.stream, s.state, detail, s.code, s.extra)
            self._put(_Out(live_key(s.stream), {"k": "status", "m": wire.encode_status(status)}, "*",
                           self._maxlen["live"], False))
        elif isinstance(event, AlertEvent):
            a = event.alert
            self._put(_Out(alerts_key(a.stream), {"k": "alert", "m": wire.encode_alert(a)}, "*",
                           self._maxlen["alerts"], False))

    def put_ack(self, stream: str, alert_id: str, by: str, time_s: float, text: str) -> None:
        """An acknowledgement made on a gateway, for every other gateway."""
        self._put(_Out(alerts_key(stream), {"k": "acked", "id": alert_id, "by": by, "t": repr(time_s), "m": text},
                       "*", self._maxlen["alerts"], False))

    def _put(self, out: _Out) -> None:
        if len(self._queue) >= self._size:
            self._queue.popleft()
            self._metrics.bus_dropped_total.labels(reason="bus_full").inc()
        self._queue.append(out)
        self._metrics.bus_queue.set(len(self._queue))
        self._idle.clear()
        self._ready.set()

    # --- the writer task ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bus-writer")

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued is written (True) or ``timeout_s`` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def aclose(self, flush_s: float = 2.0) -> None:
        if self._task is None:
            return
        if not await self.drain(flush_s):
            log.warning("bus: %d messages not written at shutdown", len(self._queue))
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            if not self._queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            batch = [self._queue[i] for i in range(min(self._batch, len(self._queue)))]
            try:
                results = await self._write(batch)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.error("bus: cannot write (%s); retrying every %.1f s, %d queued", type(exc).__name__,
                              self._retry_s, len(self._queue))
                failing = True
                self._metrics.bus_errors_total.labels(op="write").inc()
                await asyncio.sleep(self._retry_s)  # backoff while Redis is away, not a synchronisation
                continue
            if failing:
                log.info("bus: writing again")
                failing = False
            for out, result in zip(batch, results):
                if self._queue and self._queue[0] is out:
                    self._queue.popleft()
                if isinstance(result, ResponseError):
                    # a final at or below the stream's newest: this writer is stale (replaced)
                    self._metrics.bus_dropped_total.labels(reason="stale_seq").inc()
                    log.error("bus: %s refused (%s): a newer worker owns this stream", out.key, result)
                else:
                    self.written += 1
                    if out.final:
                        self.last_final_seq = seq_of(out.entry)
            self._metrics.bus_queue.set(len(self._queue))

    async def _write(self, batch: list[_Out]) -> list:
        pipe = self._r.pipeline(transaction=False)
        for out in batch:
            pipe.xadd(out.key, out.fields, id=out.entry, maxlen=out.maxlen or None, approximate=True)
        return await pipe.execute(raise_on_error=False)


async def register_streams(r: aioredis.Redis, streams: Iterable[str]) -> None:
    streams = list(streams)
    if streams:
        await r.sadd(STREAMS_KEY, *streams)


class BusReader:
    """A gateway's one XREAD loop (see the module doc). ``hub``: the gateway's Hub; the streams
    read are those its clients want (every known stream when one wants all), added as clients
    come and never dropped while the stream exists."""

    def __init__(self, r: aioredis.Redis, hub, metrics: Metrics, *, block_ms: int = 500, count: int = 1000,
                 replay_finals: int = 20, replay_alerts: int = 50, max_resume: int = 1000,
                 known_every_s: float = 2.0) -> None:
        self._r = r
        self._hub = hub
        self._metrics = metrics
        self._block_ms = block_ms
        self._count = count
        self._replay_finals = replay_finals
        self._replay_alerts = replay_alerts
        self._max_resume = max_resume
        self._known_every_s = known_every_s
        self._positions: dict[str, str] = {}  # key → the last entry ID read
        self._reading: set[str] = set()
        self._known: frozenset[str] = frozenset()
        self._warm_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.delivered = 0
        self.connected = False

    @property
    def known(self) -> frozenset[str]:
        """The streams the bus knows (``sc:streams``), as of the last look."""
        return self._known

    @property
    def reading(self) -> frozenset[str]:
        return frozenset(self._reading)

    async def refresh_known(self) -> frozenset[str]:
        self._known = frozenset(await self._r.smembers(STREAMS_KEY))
        return self._known

    # --- resume -------------------------------------------------------------------------------

    async def prepare_resume(self, streams: tuple[str, ...] | None,
                             since: Mapping[str, int]) -> dict[str, list[str]] | None:
        """Before a client is added: read its streams (warm them) and fetch the finals after
        each ``since`` (one more than the resume limit, so the hub can say it was cut)."""
        wanted = set(streams) if streams is not None else set(self._known or await self.refresh_known())
        await self.warm(wanted | set(since))
        if not since:
            return None
        out: dict[str, list[str]] = {}
        for stream, seq in since.items():
            entries = await self._r.xrange(finals_key(stream), min=f"({seq}-0", max="+",
                                           count=self._max_resume + 1)
            out[stream] = [fields["m"] for _, fields in entries]
        return out

    async def warm(self, streams: Iterable[str]) -> None:
        """Start reading ``streams`` not read yet: their last status, recent finals and alerts
        are given to the hub for replay, and reading continues from exactly there."""
        async with self._warm_lock:
            new = sorted(s for s in streams if s not in self._reading)
            if not new:
                return


            for stream in new:
                finals = await self._r.xrevrange(finals_key(stream), count=self._replay_finals)
                alerts = await self._r.xrevrange(alerts_key(stream), count=self._replay_alerts * 2)
                live = await self._r.xrevrange(live_key(stream), count=256)
                for _, fields in reversed(finals):
                    self._hub.seed(caption_of(wire.decode_server_message(fields["m"])), fields["m"])
                acks = {f["id"]: f for _, f in alerts if f.get("k") == "acked"}
                seen: set[str] = set()
                steps = []
                for _, fields in alerts:  # newest first: each alert's latest step
                    if fields.get("k") == "alert":
                        msg = wire.decode_server_message(fields["m"])
                        if msg.id not in seen:
                            seen.add(msg.id)
                            steps.append((msg, fields["m"]))
                for msg, text in reversed(steps[: self._replay_alerts]):
                    ack = acks.get(msg.id)
                    self._hub.seed(alert=alert_of(msg), text=text,
                                   acked=(ack["by"], float(ack["t"]), ack["m"]) if ack else None)
                for _, fields in live:
                    if fields.get("k") == "status":
                        self._hub.seed(status=status_of(wire.decode_server_message(fields["m"])))
                        break
                self._positions[finals_key(stream)] = finals[0][0] if finals else "0-0"
                self._positions[alerts_key(stream)] = alerts[0][0] if alerts else "0-0"
                self._positions[live_key(stream)] = live[0][0] if live else "0-0"
                self._reading.add(stream)
                # clients that already wanted it (all streams, or it by name before it existed)
                # have nothing of it: its replay, as a client subscribing now would get
                self._hub.prime_stream(stream)
            self._wake.set()

    # --- the loop -----------------------------------------------------------------------------

    def _wanted(self) -> set[str]:
        wanted = self._hub.wanted_streams()
        return set(self._known) if wanted is None else set(wanted)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_known = 0.0
        failing = False
        while True:
            try:
                if loop.time() >= next_known:
                    await self.refresh_known()
                    next_known = loop.time() + self._known_every_s
                wanted = self._wanted() - self._reading
                if wanted:
                    await self.warm(wanted)
                if not self._positions:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._known_every_s)
                    except TimeoutError:
                        pass
                    continue
                replies = await self._r.xread(dict(self._positions), count=self._count, block=self._block_ms)
                self.connected = True
                if failing:
                    log.info("bus: reading again")
                    failing = False
            except (RedisError, OSError) as exc:
                self.connected = False
                self._metrics.bus_errors_total.labels(op="read").inc()
                if not failing:
                    log.error("bus: cannot read (%s); retrying", type(exc).__name__)
                failing = True
                await asyncio.sleep(0.5)  # backoff while Redis is away, not a synchronisation
                continue
            for key, entries in replies or ():
                for entry, fields in entries:
                    self._positions[key] = entry
                    self._dispatch(key, fields)

    def _dispatch(self, key: str, fields: Mapping[str, str]) -> None:


        try:
            text = fields["m"]
            kind = "final" if key.endswith(":finals") else fields.get("k")
            if kind == "acked":
                self._hub.apply_ack(fields["id"], fields["by"], float(fields["t"]), text)
                return
            msg = wire.decode_server_message(text)
            if kind in ("final", "caption"):
                self._hub.publish_caption(caption_of(msg), text)
            elif kind == "status":
                self._hub.publish_status(status_of(msg))
            elif kind == "alert":
                self._hub.publish_alert(alert_of(msg), text)
            else:
                raise ValueError(f"unknown kind {kind!r}")
            self.delivered += 1
        except Exception as exc:  # boundary: one bad entry costs itself, not the loop
            self._metrics.bus_errors_total.labels(op="decode").inc()
            log.error("bus: bad entry on %s: %s", key, exc)
