"""The HTTP responses every route builds: plain, JSON (a :mod:`streamcap.outputs.documents`
document) and the one error body; and the stream-id check the ingest routes share.

No state: each helper makes one ``aiohttp`` response. :func:`error_response` marks its response
with the code so the server's error middleware can count it in ``streamcap_bad_requests_total``.
:func:`guarded` is the per-handler boundary: a handler's unexpected failure becomes that one
request's 500 JSON error (logged with its traceback; the body names no internal detail).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from streamcap.core.errors import ErrorCode, HttpError
from streamcap.outputs import documents
from streamcap.core.ids import is_valid_stream_id
from streamcap.core.secrets import printable

log = logging.getLogger(__name__)

HTML = "text/html"
JSON = "application/json"
TEXT = "text/plain"


def response(status: HTTPStatus, body: bytes | str, content_type: str = TEXT,
             headers: dict[str, str] | None = None) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    charset = "utf-8" if content_type.startswith("text/") else None
    return web.Response(status=status.value, body=data, content_type=content_type, charset=charset,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def json_response(status: HTTPStatus, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A document from :mod:`streamcap.outputs.documents` as the response body."""
    return response(status, documents.dumps(doc), JSON, headers)


def error_response(status: HTTPStatus, code: str, detail: str) -> web.Response:
    """The one shape of an HTTP error body: ``{"error": {"code": ..., "detail": ...}}`` (counted in
    ``streamcap_bad_requests_total{code}`` on the way out)."""
    resp = json_response(status, documents.error(code, detail))
    resp.error_code = str(code)  # type: ignore[attr-defined]
    return resp


def check_stream_id(stream: str) -> None:
    """Raise HttpError(400, bad_stream_id) unless ``stream`` is a valid stream id."""
    if not is_valid_stream_id(stream):
        raise HttpError(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_STREAM_ID,
                        f"stream id {stream!r} must be 1-64 of letters, digits, '_', '.', '-'")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """``handler`` behind a boundary: :class:`HttpError` and aiohttp's HTTP exceptions pass (the
    server's error middleware answers them) and so does cancellation; a connection lost while
    reading the request is a 400 (logged at INFO: nobody may read it); any other exception is
    logged with its traceback and answered 500 ``internal_error`` for this request only."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (HttpError, web.HTTPException, asyncio.CancelledError):
            raise
        except ConnectionResetError:  # the client went away mid-request (e.g. a body shorter than announced)
            log.info("http %s %s from %s: the connection was lost while reading the request", request.method,
                     printable(request.path), request.remote)
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                  "the connection was lost before the request was read")
        except Exception:  # boundary: one request's bug must not reach other requests or the server
            log.exception("http %s %s from %s: the handler failed", request.method, printable(request.path), request.remote)
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, ErrorCode.INTERNAL_ERROR,
                                  "the request failed on the server (the failure is logged); "
                                  "other requests and the streams are not affected")

    return run
