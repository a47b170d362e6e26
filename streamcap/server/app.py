"""The websocket + HTTP server: one port, ``websockets`` asyncio server.

``GET /ws?streams=a,b`` upgrades to a websocket that carries :mod:`streamcap.wire` messages:
``hello`` first, then the replay the :class:`~streamcap.server.hub.Hub` primed, then live
messages. Every other path is answered as plain HTTP from ``process_request`` before the
websocket handshake: ``/overlay`` (the OBS subtitle overlay), ``/healthz``, ``/metrics``,
``/`` (an index), anything else 404.

Per connection there are three tasks: a sender that drains the client's hub queue into the
socket (the only writer), a receiver that decodes client messages (``subscribe``, ``ping``;
replies go through the same queue), and a watch on the handle being closed by the hub. When
the hub marks a client slow, the connection is closed with 1008 and a reason, bounded by
``close_timeout_s`` and then aborted, so a peer that never reads cannot hold a task forever.

Everything runs on the event loop thread that called :meth:`Server.start`; publish to the hub
from that thread too.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from streamcap import __version__, wire
from streamcap.auth import AccessPolicy, Scope, bearer_token
from streamcap.errors import ProtocolError
from streamcap.metrics import Metrics
from streamcap.server.hub import ClientHandle, DisconnectReason, Hub

logger = logging.getLogger(__name__)

WS_PATH = "/ws"
OVERLAY_PATH = "/overlay"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

#: Close code and reason per disconnect reason (reasons stay well under the 123-byte limit).
CLOSE_FOR: dict[DisconnectReason, tuple[CloseCode, str]] = {
    DisconnectReason.SLOW_CLIENT: (CloseCode.POLICY_VIOLATION, "slow client: fell behind"),
    DisconnectReason.SERVER_SHUTDOWN: (CloseCode.GOING_AWAY, "server shutting down"),
}

_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


def _response(status: HTTPStatus, body: bytes | str, content_type: str) -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


def _subscription(query: dict[str, list[str]]) -> tuple[str, ...] | None:
    """The ``streams`` of a /ws query; repeated parameters are joined. Raises ProtocolError."""
    values = query.get("streams")
    return None if values is None else wire.parse_stream_list(",".join(values))


class Server:
    """streamcap's websocket and HTTP endpoints on one port; use as ``async with``.

    ``health()`` returns ``{stream_id: {"state": ..., "detail": ..., ...}}`` for /healthz and
    ``streams()`` the stream ids (for ``hello`` and the index page); both are called on the
    event loop thread and must not block.
    """

    def __init__(
        self,
        hub: Hub,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        health: Callable[[], dict[str, Any]],
        streams: Callable[[], list[str]],
        version: str = __version__,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float | None = 20.0,
        close_timeout_s: float = 5.0,
        max_message_bytes: int = 16 * wire.MAX_CLIENT_MESSAGE_BYTES,
        wall_clock: Callable[[], float] = time.time,
        access: AccessPolicy | None = None,
    ) -> None:
        self._access = access or AccessPolicy({})
        self._hub = hub
        self._metrics = metrics
        self._host = host
        self._requested_port = port
        self._health = health
        self._streams = streams
        self._version = version
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._close_timeout_s = close_timeout_s
        # Above MAX_CLIENT_MESSAGE_BYTES a message gets an error reply; above this the
        # websocket layer closes the connection with 1009.
        self._max_message_bytes = max_message_bytes
        self._wall_clock = wall_clock
        self._ws_server: WsServer | None = None
        self._overlay_html = b""
        self._stopping = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._ws_server is not None:
            raise RuntimeError("server already started")
        self._overlay_html = (
            resources.files("streamcap.server").joinpath("static/overlay.html").read_bytes()
        )
        self._ws_server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._process_request,
            compression=None,  # encoded once, sent to many: per-client deflate would undo that
            ping_interval=self._ping_interval_s,
            ping_timeout=self._ping_timeout_s,
            close_timeout=self._close_timeout_s,
            max_size=self._max_message_bytes,
        )
        logger.info("server listening on %s", self.url())

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001 and wait for the handlers (idempotent)."""
        if self._ws_server is None or self._stopping:
            return
        self._stopping = True
        self._hub.close_all(DisconnectReason.SERVER_SHUTDOWN)
        # Our handlers close their own connections, each bounded by close_timeout_s.
        self._ws_server.close(close_connections=False)
        await self._ws_server.wait_closed()
        logger.info("server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._ws_server is None:
            raise RuntimeError("server not started")
        return self._ws_server.sockets[0].getsockname()[1]

    def url(self, path: str = "/") -> str:
        """An http URL for ``path`` on this server (``ws`` URLs: swap the scheme)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{path}"

    def overlay_url(self, stream: str) -> str:
        return self.url(f"{OVERLAY_PATH}?stream={urllib.parse.quote(stream, safe='')}")

    # --- HTTP ---------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        response = None
        if url.path in (WS_PATH, OVERLAY_PATH):  # viewing captions
            headers = dict(request.headers.raw_items())
            decision = self._access.check(Scope.VIEW, bearer_token(headers, query),
                                          origin=request.headers.get("Origin"), host=request.headers.get("Host"))
            if not decision.allowed:
                self._metrics.requests_refused_total.labels(status=str(decision.status.value)).inc()
                response = _response(decision.status, f"{decision.reason}\n", _TEXT)
        response = response or self._route(url.path, query)
        if response is not None:
            logger.debug(
                "http %s %s -> %d", connection.remote_address, url.path, response.status_code
            )
        return response

    def _route(self, path: str, query: dict[str, list[str]]) -> Response | None:
        if path == WS_PATH:
            try:
                _subscription(query)
            except ProtocolError as exc:
                return _response(HTTPStatus.BAD_REQUEST, f"{exc.detail}\n", _TEXT)
            return None  # go on with the websocket handshake (426 if it is not one)
        if path == OVERLAY_PATH:
            return _response(HTTPStatus.OK, self._overlay_html, _HTML)
        if path == HEALTH_PATH:
            return self._healthz()
        if path == METRICS_PATH:
            body, content_type = self._metrics.render()
            return _response(HTTPStatus.OK, body, content_type)
        if path == "/":
            return _response(HTTPStatus.OK, self._index_html(), _HTML)
        return _response(HTTPStatus.NOT_FOUND, f"not found: {path}\n", _TEXT)

    def _healthz(self) -> Response:
        try:
            streams = self._health()
            body = json.dumps(
                {"status": "ok", "version": self._version, "streams": streams},
                allow_nan=False,
            )
        except Exception as exc:  # boundary: a broken health callable is a 500, not a crash
            logger.exception("healthz: health callable failed")
            body = json.dumps({"status": "error", "detail": f"{type(exc).__name__}: {exc}"})
            return _response(HTTPStatus.INTERNAL_SERVER_ERROR, body, _JSON)
        return _response(HTTPStatus.OK, body, _JSON)

    def _index_html(self) -> str:
        items = "\n".join(
            f'<li><code>{html.escape(s)}</code>: <a href="{html.escape(self._overlay_path(s))}">'
            "overlay</a></li>"
            for s in self._streams()
        )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>streamcap</title></head><body>\n"
            f"<h1>streamcap {html.escape(self._version)}</h1>\n<ul>\n{items}\n</ul>\n"
            f"<p>Websocket: <code>{WS_PATH}?streams=ID,ID</code> · "
            f'<a href="{HEALTH_PATH}">health</a> · <a href="{METRICS_PATH}">metrics</a></p>\n'
            "</body></html>\n"
        )

    @staticmethod
    def _overlay_path(stream: str) -> str:
        return f"{OVERLAY_PATH}?stream={urllib.parse.quote(stream, safe='')}"

    # --- websocket ----------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        url = urllib.parse.urlsplit(ws.request.path)
        streams = _subscription(urllib.parse.parse_qs(url.query, keep_blank_values=True))
        if self._stopping:
            await self._close(ws, None, DisconnectReason.SERVER_SHUTDOWN)
            return
        client = self._hub.add_client(streams)
        peer = ws.remote_address
        logger.info(
            "client %d %s: connected, streams=%s",
            client.id,
            peer,
            "all" if streams is None else ",".join(streams),
        )
        try:
            await ws.send(
                wire.encode_hello(
                    version=self._version,
                    streams=self._streams(),
                    time_s=self._wall_clock(),
                    subscribed=streams,
                )
            )
            tasks = [
                asyncio.create_task(self._send_loop(ws, client), name=f"client-{client.id}-send"),
                asyncio.create_task(self._recv_loop(ws, client), name=f"client-{client.id}-recv"),
                # the sender may be stuck in a send to a peer that does not read: watch the
                # handle itself so a drop or shutdown still closes the connection
                asyncio.create_task(client.wait_closed(), name=f"client-{client.id}-closed"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error(
                        "client %d %s: %s failed",
                        client.id,
                        peer,
                        task.get_name(),
                        exc_info=task.exception(),
                    )
            if client.close_reason is not None:
                await self._close(ws, client, client.close_reason)
        except ConnectionClosed:
            pass  # the peer went away; logged below with its close code
        finally:
            self._hub.remove_client(client)
            logger.info(
                "client %d %s: disconnected (code %s, reason %r)",
                client.id,
                peer,
                ws.close_code,
                ws.close_reason,
            )

    async def _send_loop(self, ws: ServerConnection, client: ClientHandle) -> None:
        """The connection's only writer: hub queue → socket, until the handle closes."""
        try:
            while (text := await client.get()) is not None:
                await ws.send(text)
        except ConnectionClosed:
            return

    async def _recv_loop(self, ws: ServerConnection, client: ClientHandle) -> None:
        try:
            async for raw in ws:
                try:
                    msg = wire.decode_client_message(raw)
                except ProtocolError as exc:
                    logger.info("client %d %s: bad message: %s", client.id, ws.remote_address, exc)
                    self._hub.send_to(client, wire.encode_error(exc.code, exc.detail))
                    continue
                if isinstance(msg, wire.PingMsg):
                    self._hub.send_to(client, wire.encode_pong())
                elif isinstance(msg, wire.SubscribeMsg):
                    logger.info(
                        "client %d %s: subscribe streams=%s",
                        client.id,
                        ws.remote_address,
                        "all" if msg.streams is None else ",".join(msg.streams),
                    )
                    self._hub.set_subscription(client, msg.streams)
        except ConnectionClosed:
            return

    async def _close(
        self, ws: ServerConnection, client: ClientHandle | None, reason: DisconnectReason
    ) -> None:
        """Close with the reason's code; a peer that does not read gets aborted after the
        close timeout (websockets' close() can wait on a full send buffer indefinitely)."""
        code, text = CLOSE_FOR[reason]
        if client is not None:
            logger.info("client %d %s: closing: %s", client.id, ws.remote_address, text)
        try:
            async with asyncio.timeout(self._close_timeout_s):
                await ws.close(code, text)
        except TimeoutError:
            logger.warning(
                "client %s %s: close handshake timed out; aborting",
                "?" if client is None else client.id,
                ws.remote_address,
            )
            ws.transport.abort()
