"""streamcap.server.access: the route table covers exactly the routes the server and its
extensions mount, with the scopes the docs promise; no socket is opened."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from streamcap.core.errors import ErrorCode, StreamcapError
from streamcap.server.access import PUBLIC, ROUTE_ACCESS, Refusal, RouteAccess, unlisted_routes
from streamcap.server.app import HttpError
from streamcap.server.auth import Scope
from streamcap.server.routes.api import ApiRoutes
from streamcap.server.routes.ingest import IngestRoutes
from streamcap.server.routes.viewer import ViewerRoutes
from streamcap.server.routes.whip import WhipRoutes


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


def _full_app() -> web.Application:
    """The viewer routes and every extension's, as the service mounts them (no constructor runs:
    ``routes()`` only names bound methods)."""
    app = web.Application()
    for cls in (ViewerRoutes, IngestRoutes, WhipRoutes, ApiRoutes):
        app.router.add_routes(cls.__new__(cls).routes())
    return app


def test_every_mounted_route_has_a_row_and_every_row_a_route() -> None:
    app = _full_app()
    assert unlisted_routes(app) == []
    mounted = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert set(ROUTE_ACCESS) == mounted


def test_a_route_without_a_row_is_named() -> None:
    app = web.Application()
    app.router.add_get("/healthz", _handler)
    app.router.add_post("/v1/things/{id}", _handler)
    assert unlisted_routes(app) == ["POST /v1/things/{id}"]


def test_scopes_match_the_documented_api() -> None:
    assert ROUTE_ACCESS[("GET", "/ws")] == RouteAccess(Scope.VIEW, Refusal.WEBSOCKET)
    assert ROUTE_ACCESS[("GET", "/overlay")].refusal is Refusal.TEXT
    # nothing that shows a stream is public once tokens are configured (issue 11, defect 5)
    assert ROUTE_ACCESS[("GET", "/healthz")] == RouteAccess(Scope.VIEW, Refusal.SUMMARY,
                                                             public_when="public_status")
    assert ROUTE_ACCESS[("GET", "/metrics")] == RouteAccess(Scope.VIEW, Refusal.TEXT, public_when="public_metrics")
    assert ROUTE_ACCESS[("GET", "/")] == RouteAccess(Scope.VIEW, Refusal.TEXT)
    public = {key for key, row in ROUTE_ACCESS.items() if row == PUBLIC}
    assert public == {("OPTIONS", "/whip/{stream}"), ("PATCH", "/whip/{stream}/{session}")}
    assert ROUTE_ACCESS[("GET", "/ingest/{stream}")] == RouteAccess(Scope.PUBLISH, Refusal.WEBSOCKET, True)
    assert ROUTE_ACCESS[("POST", "/whip/{stream}")] == RouteAccess(Scope.PUBLISH, Refusal.JSON, True)
    assert ROUTE_ACCESS[("POST", "/v1/streams")].scope is Scope.ADMIN
    assert ROUTE_ACCESS[("DELETE", "/v1/streams/{stream}")].scope is Scope.ADMIN
    assert ROUTE_ACCESS[("POST", "/v1/captions")].scope is Scope.PUBLISH


def test_http_error_is_in_the_one_tree_and_still_importable_from_the_app() -> None:
    exc = HttpError(HTTPStatus.CONFLICT, ErrorCode.STREAM_EXISTS, "stream 'cam1' already exists")
    assert isinstance(exc, StreamcapError)
    assert exc.status is HTTPStatus.CONFLICT and exc.detail == "stream 'cam1' already exists"
    assert exc.code == "stream_exists" and f"{exc.code}" == "stream_exists"


def test_every_public_switch_a_row_names_is_a_policy_switch() -> None:
    from streamcap.server.auth import AccessPolicy

    for row in ROUTE_ACCESS.values():
        if row.public_when is not None:
            assert AccessPolicy({}, **{row.public_when: True}).is_open(row.public_when)
            assert not AccessPolicy({}).is_open(row.public_when)


def test_docs_security_prints_the_route_table() -> None:
    from pathlib import Path

    from streamcap.server.access import markdown_table

    doc = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    assert markdown_table() in doc, "docs/security.md: paste streamcap.server.access.markdown_table()"
