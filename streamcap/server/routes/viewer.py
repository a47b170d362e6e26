"""The viewer routes every :class:`~streamcap.server.app.Server` mounts: ``/ws`` (captions over
the wire protocol), the pages (``/overlay``, ``/dashboard``, ``/publish``), ``/healthz``,
``/metrics`` and ``/`` (an index).

Access is checked before these handlers run (the rows of
:data:`streamcap.server.access.ROUTE_ACCESS`): ``/ws``, the pages and ``/`` need ``view``;
``/metrics`` needs ``view`` unless ``auth.public_metrics``; ``/healthz`` answers everyone, but only
a caller with ``view`` (or anyone with ``auth.public_status``) gets the streams' health — the
others get the status code and ``{"status": "ok"}`` or ``{"status": "error"}``. Every value a
client sent is logged through :func:`streamcap.core.secrets.printable` (one line, bounded).
A ``/ws`` connection is a hub client served by
:meth:`~streamcap.server.app.Server.serve_hub_client`; this module only reads what the client
sends (``subscribe``, ``ping``, ``ack``), replying through the hub queue so the server's sender
stays the connection's only writer.

``/healthz``: 200 with every stream's health; 503 when ``failure()`` names a reason (the pipeline
has stopped), with the streams while ``health()`` still answers; 500 when ``health()`` fails.
The summary for callers without ``view`` has the same status code.
Everything runs on the server's event loop thread; the callables must not block.
"""

from __future__ import annotations

import html
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from streamcap.core.errors import ErrorCode, ProtocolError
from streamcap.core.ids import is_valid_stream_id
from streamcap.core.secrets import printable
from streamcap.outputs import documents, wire
from streamcap.server.access import DECISION_KEY
from streamcap.server.hub import ClientHandle
from streamcap.server.responses import HTML, JSON, json_response, response

if TYPE_CHECKING:
    from streamcap.server.app import Server

logger = logging.getLogger(__name__)

WS_PATH = "/ws"
OVERLAY_PATH = "/overlay"
DASHBOARD_PATH = "/dashboard"
PUBLISH_PATH = "/publish"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
INDEX_PATH = "/"
NO_REFERRER = {"Referrer-Policy": "no-referrer"}
PAGES = {OVERLAY_PATH: "overlay.html", DASHBOARD_PATH: "dashboard.html", PUBLISH_PATH: "publish.html"}


def overlay_path(stream: str) -> str:
    return f"{OVERLAY_PATH}?stream={urllib.parse.quote(stream, safe='')}"


def parse_since(value: str | None, streams: tuple[str, ...] | None) -> dict[str, int]:
    """``?since=`` of /ws: ``SEQ`` (every subscribed stream; needs ``streams``) or
    ``ID:SEQ,ID:SEQ`` (at most 100 streams). Raises ValueError with the reason."""
    if not value:
        return {}
    if ":" not in value:
        if not streams:
            raise ValueError("since=SEQ needs streams=ID,…; or give since=ID:SEQ,…")
        seq = _seq(value)
        return {s: seq for s in streams}
    parts = value.split(",")
    if len(parts) > 100:
        raise ValueError("since names at most 100 streams")
    out: dict[str, int] = {}
    for part in parts:
        stream, sep, seq = part.rpartition(":")
        if not sep or not is_valid_stream_id(stream):
            raise ValueError(f"since must be SEQ or ID:SEQ,…, not {printable(part, 60)!r}")
        out[stream] = _seq(seq)
    return out


def _seq(text: str) -> int:
    if not (text.isdigit() and len(text) <= 18):
        raise ValueError(f"a seq is a whole number >= 0, not {printable(text, 40)!r}")
    return int(text)


def _subscription(request: web.Request) -> tuple[str, ...] | None:
    """The ``streams`` of a /ws query; repeated parameters are joined. Raises ProtocolError."""
    values = request.query.getall("streams", None)
    return None if values is None else wire.parse_stream_list(",".join(values))


class ViewerRoutes:
    """The viewer routes of ``server``; the static pages are read once, when mounted (:meth:`routes`)."""

    def __init__(self, server: Server, *, health: Callable[[], Mapping[str, Any]],
                 streams: Callable[[], list[str]], failure: Callable[[], str | None] | None = None,
                 ping_interval_s: float | None, max_message_bytes: int) -> None:
        self.server = server
        self._health = health
        self._streams = streams
        self._failure = failure
        self._ping_interval_s = ping_interval_s
        # Above MAX_CLIENT_MESSAGE_BYTES a message gets an error reply; above this the
        # websocket layer closes the connection with 1009.
        self._max_message_bytes = max_message_bytes
        self._pages: dict[str, bytes] = {}

    def routes(self) -> list[web.RouteDef]:
        static = resources.files("streamcap.server").joinpath("static")
        self._pages = {path: static.joinpath(name).read_bytes() for path, name in PAGES.items()}
        return [web.get(WS_PATH, self.ws), *(web.get(path, self.page) for path in PAGES),
                web.get(HEALTH_PATH, self.healthz), web.get(METRICS_PATH, self.metrics),
                web.get(INDEX_PATH, self.index)]

    async def aclose(self) -> None:
        pass  # viewer connections are hub clients: the server's shutdown closes them

    # --- HTTP ---------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        # a page opened with ?token= must not hand its URL to anyone as a Referer
        return response(HTTPStatus.OK, self._pages[request.path], HTML, NO_REFERRER)

    async def healthz(self, request: web.Request) -> web.Response:
        version = self.server.version
        failure = self._failure_reason()
        status = HTTPStatus.OK if failure is None else HTTPStatus.SERVICE_UNAVAILABLE
        decision = request.get(DECISION_KEY)
        if decision is not None and not decision.allowed:  # no view: ok or not, nothing else
            if failure is None:
                try:
                    self._health()
                except Exception:  # boundary: a broken health callable is a 500, not a crash
                    logger.exception("healthz: health callable failed")
                    status = HTTPStatus.INTERNAL_SERVER_ERROR
            return json_response(status, documents.health_summary(status is HTTPStatus.OK))
        try:
            streams = self._health()
            body = documents.dumps(documents.health(version, streams) if failure is None
                                   else documents.health_error(failure, version=version, streams=streams))
        except Exception as exc:  # boundary: a broken health callable is a 500, not a crash
            logger.exception("healthz: health callable failed")
            if failure is None:
                return json_response(HTTPStatus.INTERNAL_SERVER_ERROR,
                                     documents.health_error(f"{type(exc).__name__}: {exc}"))
            body = documents.dumps(documents.health_error(failure, version=version))
        return response(status, body, JSON)

    def _failure_reason(self) -> str | None:
        if self._failure is None:
            return None
        try:
            return self._failure()
        except Exception as exc:  # boundary: a broken failure callable reports itself as the failure
            logger.exception("healthz: failure callable failed")
            return f"cannot tell whether the pipeline runs: {type(exc).__name__}: {exc}"

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.server.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def index(self, request: web.Request) -> web.Response:
        return response(HTTPStatus.OK, self._index_html(), HTML, NO_REFERRER)

    def _index_html(self) -> str:
        items = "\n".join(
            f'<li><code>{html.escape(s)}</code>: <a href="{html.escape(overlay_path(s))}">'
            "overlay</a></li>"
            for s in self._streams()
        )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>streamcap</title></head><body>\n"
            f"<h1>streamcap {html.escape(self.server.version)}</h1>\n<ul>\n{items}\n</ul>\n"
            f'<p><a href="{DASHBOARD_PATH}">dashboard</a> · <a href="{PUBLISH_PATH}">publish</a> · '
            f"websocket: <code>{WS_PATH}?streams=ID,ID</code> · "
            f'<a href="{HEALTH_PATH}">health</a> · <a href="{METRICS_PATH}">metrics</a></p>\n'
            "</body></html>\n"
        )

    # --- websocket ----------------------------------------------------------------------------

    async def ws(self, request: web.Request) -> web.StreamResponse:
        try:
            streams = _subscription(request)
            since = parse_since(request.query.get("since"), streams)
        except ProtocolError as exc:
            return response(HTTPStatus.BAD_REQUEST, f"{exc.detail}\n")
        except ValueError as exc:
            return response(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        ws = web.WebSocketResponse(heartbeat=self._ping_interval_s, compress=False,
                                   max_msg_size=self._max_message_bytes, timeout=self.server.close_timeout_s)
        if not ws.can_prepare(request).ok:
            return response(HTTPStatus.UPGRADE_REQUIRED, "this path needs a websocket upgrade\n",
                            headers={"Upgrade": "websocket"})
        await ws.prepare(request)
        peer = request.remote
        with self.server.track():
            logger.info("viewer %s: connected, streams=%s", peer,
                        "all" if streams is None else printable(",".join(streams)))
            await self.server.serve_hub_client(request, ws, streams,
                                               lambda client: self._receive(ws, client, peer), since=since)
            logger.info("viewer %s: disconnected (code %s)", peer, ws.close_code)
        return ws

    async def _receive(self, ws: web.WebSocketResponse, client: ClientHandle, peer: str | None) -> None:
        hub = self.server.hub
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                raw: str | bytes = msg.data
            elif msg.type is WSMsgType.BINARY:
                raw = msg.data
            else:
                return
            try:
                decoded = wire.decode_client_message(raw)
            except ProtocolError as exc:
                logger.info("client %d %s: bad message: %s", client.id, peer, printable(exc, 300))
                hub.send_to(client, wire.encode_error(exc.code, exc.detail))
                continue
            if isinstance(decoded, wire.PingMsg):
                hub.send_to(client, wire.encode_pong())
            elif isinstance(decoded, wire.AckMsg):
                self.ack_alert(client, decoded, peer)
            elif isinstance(decoded, wire.SubscribeMsg):
                logger.info("client %d %s: subscribe streams=%s", client.id, peer,
                            "all" if decoded.streams is None else printable(",".join(decoded.streams)))
                since = dict(decoded.since or {})
                resumed = None
                if since and self.server.prepare_resume is not None:
                    resumed = await self.server.prepare_resume(decoded.streams, since)
                hub.set_subscription(client, decoded.streams, since, resumed)

    def ack_alert(self, client: ClientHandle, msg: wire.AckMsg, peer: str | None) -> None:
        by = msg.by or f"websocket {peer or '?'}"
        try:
            self.server.hub.ack(msg.id, by, self.server.wall_clock())
        except KeyError:
            self.server.hub.send_to(client, wire.encode_error(ErrorCode.UNKNOWN_ALERT, f"no recent alert {msg.id!r}"))
            return
        logger.info("alert %s acknowledged by %s", printable(msg.id, 100), printable(by, 100))
