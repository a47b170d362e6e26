"""Who may call which route: the one table, read by the server's access middleware.

Every route the server mounts (its own viewer routes and every extension's) has a row in
:data:`ROUTE_ACCESS`, keyed by method and path pattern (aiohttp's canonical form: ``{n}`` without
its regular expression; ``HEAD`` reads the ``GET`` row). :func:`unlisted_routes` names the routes
without a row, and :meth:`streamcap.server.app.Server.start` refuses to start with any, so a new
route cannot go unguarded by omission. Each server reads its own copy
(:attr:`~streamcap.server.app.Server.route_access`), which a test may extend before starting.

A row says the :class:`~streamcap.server.auth.Scope` needed (``None``: public), how a refusal is
answered (:class:`Refusal`), whether the ``{stream}`` path parameter is validated before access is
checked (the ingest routes answer a malformed stream id with 400 whatever the token), and which
switch of the :class:`~streamcap.server.auth.AccessPolicy` (``public_status``, ``public_metrics``)
opens the route to everyone. A request to a guarded route is answered ``Cache-Control: private``
(never stored by a shared cache). ``docs/security.md`` prints this table
(:func:`markdown_table`); a unit test keeps the two in step.
The middleware stores its :class:`~streamcap.server.auth.Decision` under :data:`DECISION_KEY` on
the request for the handlers that need it.

Pure: no I/O; ``aiohttp`` only for the request and application types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

from streamcap.server.auth import Decision, Scope

#: Where the middleware leaves the request's :class:`~streamcap.server.auth.Decision`.
DECISION_KEY = web.RequestKey("streamcap_access", Decision)


class Refusal(str, Enum):
    """How a refused request is answered."""

    JSON = "json"  # the HTTP status (401/403) and the JSON error body; 401 with WWW-Authenticate
    WEBSOCKET = "websocket"  # an upgrade is accepted, then closed with 4401/4403; else as JSON
    TEXT = "text"  # the HTTP status and the reason as plain text (the HTML pages)
    SUMMARY = "summary"  # the handler runs and answers a reduced public document (/healthz: ok or not)


@dataclass(frozen=True, slots=True)
class RouteAccess:
    scope: Scope | None  # None: public, nothing is checked
    refusal: Refusal = Refusal.JSON
    stream_id_first: bool = False  # validate {stream} before checking access
    public_when: str | None = None  # the AccessPolicy switch that makes the route public


PUBLIC = RouteAccess(None)

#: (method, path pattern) → what the route needs. The one place access is decided.
ROUTE_ACCESS: Mapping[tuple[str, str], RouteAccess] = {
    # viewer (streamcap.server.routes.viewer)
    ("GET", "/ws"): RouteAccess(Scope.VIEW, Refusal.WEBSOCKET),
    # the pages hold no secret; the publish page's WHIP request carries its own (publish) token
    ("GET", "/overlay"): RouteAccess(Scope.VIEW, Refusal.TEXT),
    ("GET", "/dashboard"): RouteAccess(Scope.VIEW, Refusal.TEXT),
    ("GET", "/publish"): RouteAccess(Scope.VIEW, Refusal.TEXT),
    # anonymous: 200/503 and ok or not only; the streams' health (URLs, details, captions) needs view
    ("GET", "/healthz"): RouteAccess(Scope.VIEW, Refusal.SUMMARY, public_when="public_status"),
    ("GET", "/metrics"): RouteAccess(Scope.VIEW, Refusal.TEXT, public_when="public_metrics"),
    ("GET", "/"): RouteAccess(Scope.VIEW, Refusal.TEXT),
    # websocket frame ingest (streamcap.server.routes.ingest)
    ("GET", "/ingest/{stream}"): RouteAccess(Scope.PUBLISH, Refusal.WEBSOCKET, stream_id_first=True),
    # WHIP (streamcap.server.routes.whip)
    ("POST", "/whip/{stream}"): RouteAccess(Scope.PUBLISH, stream_id_first=True),
    ("OPTIONS", "/whip/{stream}"): PUBLIC,
    ("DELETE", "/whip/{stream}/{session}"): RouteAccess(Scope.PUBLISH),
    ("PATCH", "/whip/{stream}/{session}"): PUBLIC,  # always 405: no trickle ICE
    # the /v1 API (streamcap.server.routes.api)
    ("GET", "/v1/streams"): RouteAccess(Scope.VIEW),
    ("POST", "/v1/streams"): RouteAccess(Scope.ADMIN),
    ("DELETE", "/v1/streams/{stream}"): RouteAccess(Scope.ADMIN),
    ("GET", "/v1/streams/{stream}/chapters"): RouteAccess(Scope.VIEW),
    ("GET", "/v1/streams/{stream}/subtitles.m3u8"): RouteAccess(Scope.VIEW),
    ("GET", "/v1/streams/{stream}/subtitles/{n}.vtt"): RouteAccess(Scope.VIEW),
    ("GET", "/v1/streams/{stream}/snapshot.jpg"): RouteAccess(Scope.VIEW),
    ("POST", "/v1/captions"): RouteAccess(Scope.PUBLISH),
    ("GET", "/v1/alerts"): RouteAccess(Scope.VIEW),
    ("POST", "/v1/alerts/{alert}/ack"): RouteAccess(Scope.VIEW),
}


def _key(method: str, resource: web.AbstractResource) -> tuple[str, str]:
    return ("GET" if method == "HEAD" else method, resource.canonical)


def route_access(request: web.Request, table: Mapping[tuple[str, str], RouteAccess] = ROUTE_ACCESS,
                 ) -> RouteAccess | None:
    """The row for the route ``request`` matched; None when it matched none (a 404 or 405 to come).
    A matched route without a row raises ``KeyError`` (:func:`unlisted_routes` prevents that)."""
    match = request.match_info
    if match.http_exception is not None:
        return None
    resource = match.route.resource
    if resource is None:
        return None
    return table[_key(request.method, resource)]


def unlisted_routes(app: web.Application,
                    table: Mapping[tuple[str, str], RouteAccess] = ROUTE_ACCESS) -> list[str]:
    """``"METHOD /path"`` for every route of ``app`` without a row in ``table``."""
    missing = []
    for route in app.router.routes():
        if route.resource is None:
            continue
        key = _key(route.method, route.resource)
        if key not in table:
            missing.append(f"{key[0]} {key[1]}")
    return missing


_WHO = {None: "anyone", Scope.VIEW: "view", Scope.PUBLISH: "publish", Scope.ADMIN: "admin"}


def markdown_table(table: Mapping[tuple[str, str], RouteAccess] = ROUTE_ACCESS) -> str:
    """The route table as Markdown, for docs/security.md (a test compares the two)."""
    lines = ["| method | path | needs | refused with | public when |", "|---|---|---|---|---|"]
    for (method, path), row in sorted(table.items(), key=lambda item: (item[0][1], item[0][0])):
        refusal = "-" if row.scope is None else row.refusal.value
        switch = f"`auth.{row.public_when}`" if row.public_when else "-"
        lines.append(f"| {method} | `{path}` | {_WHO[row.scope]} | {refusal} | {switch} |")
    return "\n".join(lines)
