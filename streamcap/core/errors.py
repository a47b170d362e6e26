"""One exception tree for streamcap, and the one list of stable error codes.

Every error carries a ``code`` from :class:`ErrorCode`; the same codes appear on the wire
(``error`` and ``status`` messages) and in HTTP error bodies (``{"error": {"code", "detail"}}``),
so clients can switch on them. ``ErrorCode`` is a ``str`` Enum: a member equals, hashes and
serialises as its plain string. The tree (codes in brackets)::

    StreamcapError [internal_error]
     ├── ConfigError [bad_config]
     ├── SourceError [source_error]
     │    ├── BadSourceURL [bad_source_url]
     │    └── SourceEnded [source_ended]
     ├── EngineError [engine_error]
     │    └── EngineLoadError [engine_load_error]
     ├── ProtocolError [bad_message; also bad_json, bad_frame, bad_base64, too_large, too_many_pixels]
     ├── HttpError [any code, plus an HTTP status]
     ├── EmbedderUnavailable [embedder_unavailable]   (streamcap.alerts.embedding)
     └── ExportError [export_failed]                   (streamcap.export.base)

An instance may carry another code than its class's (``ProtocolError(..., code=ErrorCode.BAD_FRAME)``).
Pure: no I/O; ``http`` is used only for its status enum.
"""

from __future__ import annotations

from enum import Enum
from http import HTTPStatus


class ErrorCode(str, Enum):
    """Every stable error code streamcap sends (wire ``error``/``status`` and HTTP bodies)."""

    # the exception classes' own codes
    INTERNAL_ERROR = "internal_error"
    BAD_CONFIG = "bad_config"
    SOURCE_ERROR = "source_error"
    BAD_SOURCE_URL = "bad_source_url"
    SOURCE_ENDED = "source_ended"
    ENGINE_ERROR = "engine_error"
    ENGINE_LOAD_ERROR = "engine_load_error"
    EMBEDDER_UNAVAILABLE = "embedder_unavailable"
    EXPORT_FAILED = "export_failed"
    # a stream's last status: removed through the API
    STREAM_REMOVED = "stream_removed"
    # a client sent something unusable (wire messages, ingest frames, HTTP requests)
    BAD_MESSAGE = "bad_message"
    BAD_FRAME = "bad_frame"
    BAD_BASE64 = "bad_base64"
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    BAD_STREAM_ID = "bad_stream_id"
    BAD_FORMAT = "bad_format"
    BAD_CONTENT_TYPE = "bad_content_type"
    BAD_SDP = "bad_sdp"
    TOO_LARGE = "too_large"
    UNDECODABLE_VIDEO = "undecodable_video"
    # the request is well formed but cannot be done
    UNKNOWN_ALERT = "unknown_alert"
    STREAM_EXISTS = "stream_exists"
    NOT_A_PUSH_STREAM = "not_a_push_stream"
    TOO_MANY_SESSIONS = "too_many_sessions"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UPGRADE_REQUIRED = "upgrade_required"
    # access refusals
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # over a limit on input (named in the detail; see docs/security.md) or refused by a policy
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_MANY_STREAMS = "too_many_streams"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    # a resume (?since=) had more finals than one replay gives: the detail says where to go on
    RESUME_TRUNCATED = "resume_truncated"

    def __str__(self) -> str:  # the plain code in f-strings, logs and metric labels
        return self.value


class StreamcapError(Exception):
    """Root of every streamcap error."""

    code: str = ErrorCode.INTERNAL_ERROR

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code

    @property
    def detail(self) -> str:
        return str(self)


class ConfigError(StreamcapError):
    code = ErrorCode.BAD_CONFIG


class SourceError(StreamcapError):
    """A source could not be opened or read."""

    code = ErrorCode.SOURCE_ERROR


class BadSourceURL(SourceError):
    code = ErrorCode.BAD_SOURCE_URL


class SourceEnded(SourceError):
    """A finite source (a file) has no more frames."""

    code = ErrorCode.SOURCE_ENDED


class EngineError(StreamcapError):
    code = ErrorCode.ENGINE_ERROR


class EngineLoadError(EngineError):
    code = ErrorCode.ENGINE_LOAD_ERROR


class ProtocolError(StreamcapError):
    """A client sent something the wire schema does not allow."""

    code = ErrorCode.BAD_MESSAGE


class HttpError(StreamcapError):
    """A client error an HTTP handler raises: the server answers ``status`` with the error body
    ``{"error": {"code": code, "detail": detail}}`` (see :mod:`streamcap.outputs.documents`)."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, status: HTTPStatus, code: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.status = status
