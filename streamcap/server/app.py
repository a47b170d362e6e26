"""The HTTP + websocket server: one port, one ``aiohttp`` application (optionally TLS).

The server owns the lifecycle, the access and error middlewares, and the websocket plumbing
every hub client shares; the routes live in :mod:`streamcap.server.routes`. It always mounts the
viewer routes (:mod:`.routes.viewer`: ``/ws``, the pages, ``/healthz``, ``/metrics``, ``/``);
``extensions`` mount more on the same application: with the pipeline, the service adds WHIP
(:mod:`.routes.whip`), websocket frame ingest (:mod:`.routes.ingest`) and the ``/v1`` API
(:mod:`.routes.api`). Responses are built with :mod:`streamcap.server.responses`; every JSON body
comes from :mod:`streamcap.outputs.documents`.

A websocket hub client (a ``/ws`` viewer, an ``/ingest`` publisher) gets ``hello`` first, then
the replay the :class:`~streamcap.server.hub.Hub` primed, then live messages
(:meth:`Server.serve_hub_client`). Per connection there are three tasks: a sender that drains
the client's hub queue into the socket (the only writer), the route's receiver reading the
socket (replies go through the same queue), and a watch on the handle being closed by the hub.
When the hub marks a client slow, the connection is closed with 1008 and a reason, bounded by
``close_timeout_s`` and then aborted, so a peer that never reads cannot hold a task forever.

Access: one middleware looks up the scope each route needs in
:data:`streamcap.server.access.ROUTE_ACCESS` (the server refuses to start with a route missing
from it), asks :meth:`Server.authorize`, and answers a refusal before any handler runs: a
websocket upgrade is accepted and closed with 4401/4403 and the reason, plain HTTP gets 401/403
with the JSON error body (``WWW-Authenticate: Bearer`` on 401), a page the reason as text. Every
refusal is counted in ``streamcap_requests_refused_total``. The decision is left on the request
under :data:`~streamcap.server.access.DECISION_KEY`. A route whose row says
``Refusal.SUMMARY`` (``/healthz``) runs its handler whatever the decision, which answers a reduced
document to a caller without the scope; a refusal there is counted only when a token was sent.
Every answer to a guarded route is marked ``Cache-Control: private``.

``/healthz`` answers 200 with every stream's health, 503 when the ``failure`` callable names a
reason (the pipeline has stopped), 500 when the health itself cannot be read; a caller without
``view`` (and ``auth.public_status`` off) gets the same status with ``{"status": "ok"}`` or
``{"status": "error"}`` only.

Logs: :meth:`Server.start` installs :mod:`streamcap.server.logfilter` (tokens and URL credentials
hidden in every aiohttp and streamcap record; unparseable request lines demoted to one warning
without the line); every client-supplied value in a log line goes through
:func:`streamcap.core.secrets.printable`.

Everything runs on the event loop thread that called :meth:`Server.start`; publish to the hub
from that thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.web_protocol import RequestHandler

from streamcap import __version__
from streamcap.core.errors import ErrorCode, HttpError
from streamcap.core.secrets import printable
from streamcap.outputs import documents, wire
from streamcap.runtime.metrics import Metrics
from streamcap.server.access import DECISION_KEY, ROUTE_ACCESS, Refusal, route_access, unlisted_routes
from streamcap.server.auth import ALLOW, AccessPolicy, Decision, Scope, bearer_token
from streamcap.server import logfilter
from streamcap.server.hub import ClientHandle, DisconnectReason, Hub
from streamcap.server.responses import check_stream_id, error_response, json_response, response
from streamcap.server.routes.viewer import WS_PATH, ViewerRoutes, overlay_path

__all__ = ["HttpError", "Server", "check_stream_id", "error_response", "json_response", "response", "tls_context"]

logger = logging.getLogger(__name__)

#: Close code and reason per disconnect reason (reasons stay well under the 123-byte limit).
CLOSE_FOR: dict[DisconnectReason, tuple[int, str]] = {
    DisconnectReason.SLOW_CLIENT: (WSCloseCode.POLICY_VIOLATION, "slow client: fell behind"),
    DisconnectReason.SERVER_SHUTDOWN: (WSCloseCode.GOING_AWAY, "server shutting down"),
}


def _query(request: web.Request) -> dict[str, list[str]]:
    return {k: request.query.getall(k) for k in set(request.query)}


def _private(resp: web.StreamResponse) -> web.StreamResponse:
    """Mark the answer to a guarded request as for this client only: a shared cache (a proxy, a
    CDN) must not keep it and hand it to someone without the token."""
    if resp.prepared:  # a websocket or a streamed body: its headers are gone
        return resp
    directives = [d.strip() for d in resp.headers.get("Cache-Control", "").split(",") if d.strip()]
    directives = [d for d in directives if d.lower() not in ("public", "private")]
    resp.headers["Cache-Control"] = ", ".join(["private", *directives])
    return resp


def tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A server TLS context from PEM files (raises ``OSError``/``ssl.SSLError`` with the path)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class _QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, except that the answer to a request it cannot parse (request
    line over 8190 bytes, an unencoded space, not HTTP) no longer echoes the raw line back: that
    line may carry ``?token=…``. Those answers never reach our middlewares, so this is the one
    place to change them."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status < 500:
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
            message = f"{status} {phrase}: the request could not be parsed"
        return super().handle_error(request, status, exc, message)


class _QuietParseErrorsServer(web.Server):
    """``web.Server`` making :class:`_QuietRequestHandler` connections (its ``__call__`` is the
    protocol factory). Assigned as the ``__class__`` of the runner's server after setup, so every
    argument aiohttp gave the server is kept."""

    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class Server:
    """streamcap's HTTP and websocket endpoints on one port; use as ``async with``.

    ``health()`` returns ``{stream_id: {"state": ..., "detail": ..., ...}}`` for /healthz and
    ``streams()`` the stream ids (for ``hello`` and the index page); ``failure()``, when given,
    returns why the pipeline can no longer caption (``/healthz`` then answers 503) or None. All
    three are called on the event loop thread and must not block. ``extensions`` are objects with
    ``routes() -> list[web.RouteDef]`` and an async ``aclose()`` (WHIP, ingest, the /v1 API),
    mounted on the same application and closed on stop; each of their routes needs a row in
    :data:`streamcap.server.access.ROUTE_ACCESS`.
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
        failure: Callable[[], str | None] | None = None,
        version: str = __version__,
        ping_interval_s: float | None = 20.0,
        close_timeout_s: float = 5.0,
        max_message_bytes: int = 16 * wire.MAX_CLIENT_MESSAGE_BYTES,
        max_body_bytes: int = 1 << 20,
        wall_clock: Callable[[], float] = time.time,
        access: AccessPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        extensions: list[Any] | None = None,
    ) -> None:
        self.access = access or AccessPolicy({})
        self.hub = hub
        self.metrics = metrics
        self._host = host
        self._requested_port = port
        self._streams = streams
        self.version = version
        self.close_timeout_s = close_timeout_s
        self._max_body_bytes = max_body_bytes
        self.wall_clock = wall_clock
        self._ssl = ssl_context
        self.extensions = list(extensions or [])
        self.viewer = ViewerRoutes(self, health=health, streams=streams, failure=failure,
                                   ping_interval_s=ping_interval_s, max_message_bytes=max_message_bytes)
        #: what each route needs (method, path pattern → RouteAccess); extend it before start()
        self.route_access = dict(ROUTE_ACCESS)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._handlers: set[asyncio.Task] = set()
        self.stopping = False
        #: async (streams, since) → the finals to resume with per stream, or None (the hub's own
        #: store answers); a gateway reads them from its bus. Awaited before the client is added.
        self.prepare_resume: Callable[[tuple[str, ...] | None, Mapping[str, int]],
                                      Awaitable[Mapping[str, list[str]] | None]] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("server already started")
        app = web.Application(client_max_size=self._max_body_bytes)
        for ext in [self.viewer, *self.extensions]:
            app.router.add_routes(ext.routes())
        unlisted = unlisted_routes(app, self.route_access)
        if unlisted:
            raise RuntimeError(f"routes without a row in streamcap.server.access.ROUTE_ACCESS: {', '.join(unlisted)}")
        logfilter.install()  # before the first request: no token reaches a log line
        app.middlewares.append(self._errors_middleware)  # outermost: also answers the access check's errors
        app.middlewares.append(self._access_middleware)
        # timeout_ceil_threshold: aiohttp rounds timers of 5 s or more up to the whole second, so
        # the heartbeats of every viewer that connected in the same second fire in one loop
        # iteration (1,000 pings at once stalled delivery ~100 ms: tools/bench_gateway); exact
        # deadlines keep them spread as the connections were
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=self.close_timeout_s, timeout_ceil_threshold=1e9)
        await self._runner.setup()
        assert self._runner.server is not None
        self._runner.server.__class__ = _QuietParseErrorsServer  # see the class: same state, one method
        self._site = web.TCPSite(self._runner, self._host, self._requested_port, ssl_context=self._ssl)
        await self._site.start()
        logger.info("server listening on %s", self.url())

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001 and wait for the handlers (idempotent)."""
        if self._runner is None or self.stopping:
            return
        self.stopping = True
        self.hub.close_all(DisconnectReason.SERVER_SHUTDOWN)
        for ext in self.extensions:
            try:
                await ext.aclose()
            except Exception:  # boundary: one extension failing to close must not block the rest
                logger.exception("closing %s failed", type(ext).__name__)
        # our viewer handlers close their own connections, each bounded by close_timeout_s
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.close_timeout_s * 2)
        await self._runner.cleanup()
        logger.info("server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("server not started")
        return self._runner.addresses[0][1]

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    def url(self, path: str = "/") -> str:
        """An http(s) URL for ``path`` on this server (websocket URLs: :meth:`ws_url`)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self.scheme}://{host}:{self.port}{path}"

    def ws_url(self, path: str = WS_PATH) -> str:
        return "ws" + self.url(path)[len("http"):]

    def overlay_url(self, stream: str) -> str:
        return self.url(overlay_path(stream))

    # --- access -------------------------------------------------------------------------------

    def authorize(self, request: web.Request, need: Scope, *, count_anonymous: bool = True) -> Decision:
        """Whether ``request`` may do what needs ``need``; a refusal is counted (and logged),
        unless ``count_anonymous`` is false and the request carried no token. The access middleware
        calls this for every guarded route; handlers need not."""
        headers = {k: v for k, v in request.headers.items()}
        token = bearer_token(headers, _query(request))
        decision = self.access.check(need, token, origin=request.headers.get("Origin"),
                                     host=request.headers.get("Host"))
        if not decision.allowed and (token or count_anonymous):
            self.metrics.requests_refused_total.labels(status=str(decision.status.value)).inc()
            logger.info("http %s %s %s: refused %d (%s)", request.remote, request.method,
                        printable(request.path), decision.status.value, printable(decision.reason))
        return decision

    async def refuse(self, request: web.Request, decision: Decision) -> web.StreamResponse:
        """Answer a refused request: a websocket handshake is accepted and closed at once with
        4401/4403 (4000 + the HTTP status) and the reason, which a browser can read (it never
        sees a refused handshake's status); anything else gets the HTTP status and a JSON body."""
        ws = web.WebSocketResponse(timeout=self.close_timeout_s)
        if not ws.can_prepare(request).ok:
            return self.refusal(decision)
        await ws.prepare(request)
        await self.close_ws(request, ws, 4000 + decision.status.value, decision.reason[:120])
        return ws

    @staticmethod
    def refusal(decision: Decision) -> web.Response:
        """A refusal as plain HTTP: the status and the JSON error body (401: ``WWW-Authenticate``)."""
        headers = {"WWW-Authenticate": "Bearer"} if decision.status is HTTPStatus.UNAUTHORIZED else None
        return json_response(decision.status, documents.refusal(decision.status, decision.reason), headers)

    @web.middleware
    async def _access_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Check the scope :data:`~streamcap.server.access.ROUTE_ACCESS` names for the route and
        answer a refusal before the handler runs; a request that matched no route passes (404/405)."""
        row = route_access(request, self.route_access)
        if row is None or row.scope is None or self.access.is_open(row.public_when):
            request[DECISION_KEY] = ALLOW
            return await handler(request)
        if row.stream_id_first:
            check_stream_id(request.match_info["stream"])
        decision = self.authorize(request, row.scope, count_anonymous=row.refusal is not Refusal.SUMMARY)
        request[DECISION_KEY] = decision
        if decision.allowed or row.refusal is Refusal.SUMMARY:  # a summary handler reads the decision
            return _private(await handler(request))
        if row.refusal is Refusal.WEBSOCKET:
            return await self.refuse(request, decision)
        if row.refusal is Refusal.TEXT:
            return response(decision.status, f"{decision.reason}\n")
        return self.refusal(decision)

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Boundary: a handler's :class:`HttpError` and aiohttp's own 4xx (404, 405, 413) get our
        error body and are counted in ``bad_requests_total``; a handler bug is a 500 with a log
        line, never a dropped connection or a stopped server."""
        try:
            resp = await handler(request)
        except HttpError as exc:
            logger.info("http %s %s from %s: %d %s", request.method, printable(request.path), request.remote,
                        exc.status.value, printable(exc.detail, 500))
            resp = error_response(exc.status, exc.code, exc.detail)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
                    413: ErrorCode.TOO_LARGE}.get(exc.status, ErrorCode.BAD_REQUEST)
            detail = exc.text or exc.reason
            if exc.status == 404:
                detail = f"not found: {request.path}"
            elif exc.status == 413:
                detail = f"request body too large (limit {self._max_body_bytes} bytes)"
            resp = error_response(HTTPStatus(exc.status), code, detail)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            logger.exception("http %s %s failed", request.method, printable(request.path))
            # the exception's text may quote the request (paths, values): it goes to the log only
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, ErrorCode.INTERNAL_ERROR,
                                  f"internal error ({type(exc).__name__}); the server log has the details")
        code = getattr(resp, "error_code", None)  # set by error_response; access refusals are counted apart
        if code is not None:
            self.metrics.bad_requests_total.labels(code=code).inc()
        return resp

    # --- websocket ----------------------------------------------------------------------------

    async def serve_hub_client(self, request: web.Request, ws: web.WebSocketResponse,
                               streams: tuple[str, ...] | None,
                               receive: Callable[[ClientHandle], Awaitable[None]],
                               since: Mapping[str, int] | None = None) -> None:
        """A prepared websocket as a hub client of ``streams``: ``hello``, then the hub's messages
        out and ``receive(client)`` reading the socket, until either ends (see :meth:`serve_ws`)."""
        if self.stopping:
            await self.close_ws(request, ws, *CLOSE_FOR[DisconnectReason.SERVER_SHUTDOWN])
            return
        resumed = None
        if self.prepare_resume is not None:
            resumed = await self.prepare_resume(streams, since or {})
        client = self.hub.add_client(streams, since=since, resumed=resumed)  # no await in between
        try:
            await ws.send_str(wire.encode_hello(version=self.version, streams=self._streams(),
                                                time_s=self.wall_clock(), subscribed=streams))
            await self.serve_ws(request, ws, client, receive(client))
        except ConnectionError:
            pass  # the peer went away; callers log the close code
        finally:
            self.hub.remove_client(client)

    async def serve_ws(self, request: web.Request, ws: web.WebSocketResponse, client: ClientHandle,
                       receiver: Any) -> None:
        """Run a prepared websocket for a hub client: the hub queue → socket sender, ``receiver``
        (a coroutine reading the socket) and a watch on the handle; the first to finish ends
        the connection, closed with the hub's reason when it dropped the client."""
        tasks = [
            asyncio.create_task(self._send_loop(ws, client), name=f"client-{client.id}-send"),
            asyncio.create_task(receiver, name=f"client-{client.id}-recv"),
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
                logger.error("client %d %s: %s failed", client.id, request.remote, task.get_name(),
                             exc_info=task.exception())
        if client.close_reason is not None:
            logger.info("client %d %s: closing: %s", client.id, request.remote, CLOSE_FOR[client.close_reason][1])
            await self.close_ws(request, ws, *CLOSE_FOR[client.close_reason])
        elif not ws.closed:
            await self.close_ws(request, ws, WSCloseCode.OK, "")

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """The current handler task counts as a live websocket handler :meth:`stop` waits for."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            yield
        finally:
            self._handlers.discard(task)

    async def _send_loop(self, ws: web.WebSocketResponse, client: ClientHandle) -> None:
        """The connection's only writer: hub queue → socket, until the handle closes."""
        try:
            while (text := await client.get()) is not None:
                await ws.send_str(text)
        except (ConnectionError, RuntimeError):  # closing/closed transport
            return

    async def close_ws(self, request: web.Request, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        """Close with ``code``; a peer that does not read gets aborted after the close timeout
        (a close frame can wait on a full send buffer indefinitely)."""
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await ws.close(code=code, message=reason.encode())
        except TimeoutError:
            logger.warning("websocket %s: close handshake timed out; aborting", request.remote)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass
