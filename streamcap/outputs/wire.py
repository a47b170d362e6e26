"""The websocket wire schema, version 1: the one place it lives.

Every message is one JSON object in one text frame, with a ``type`` and a version ``v``.
Server → client: ``hello`` (always first), ``caption``, ``status``, ``error``, ``pong``,
``ingested`` (on ``/ingest`` only), ``alert``, ``acked``.
Client → server: ``subscribe`` (replaces the subscription), ``ping``, ``ack`` (acknowledges an alert).
``docs/wire.md`` documents each message; ``docs/schema/wire-v1.json`` is the matching JSON
Schema (a unit test keeps the two in step). The HTTP endpoints' JSON bodies are
:mod:`streamcap.outputs.documents`; the error codes are :class:`~streamcap.core.errors.ErrorCode`.

Pure: no I/O, no clock, no asyncio. Encoders take value types from :mod:`streamcap.core.types`
(or plain values) and return compact JSON text; the server encodes each message once and
fans the same string out to every client. Decoders validate strictly by hand (no extra
dependency) and return frozen dataclasses, raising :class:`~streamcap.core.errors.ProtocolError`
(code ``bad_message``) on anything the schema does not allow: malformed JSON (parsed by
:func:`streamcap.outputs.jsonsafe.loads`: bounded size, depth and number length), duplicate keys,
non-finite numbers, an unknown type, a wrong version, a missing, extra or mistyped field.
Version 1 is closed: adding a field means a new version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from streamcap.core.errors import ErrorCode, ProtocolError
from streamcap.core.ids import STREAM_ID_MAX_CHARS, STREAM_ID_RULE, is_valid_stream_id
from streamcap.outputs import jsonsafe
from streamcap.outputs.jsonsafe import JsonLimits
from streamcap.core.types import (
    VIDEO_TRACK,
    Alert,
    AlertPhase,
    Caption,
    CaptionState,
    MOTIONS,
    SceneObject,
    Severity,
    SpeechWord,
    Status,
    StreamState,
)

WIRE_VERSION = 1
SERVER_NAME = "streamcap"
#: Largest client message accepted, in bytes of UTF-8.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
#: Deepest nesting of arrays/objects in a client message (the schema needs 2).
MAX_CLIENT_JSON_DEPTH = 8
#: Longest stream id accepted on the wire: the one rule of :mod:`streamcap.core.ids`.
MAX_STREAM_ID_CHARS = STREAM_ID_MAX_CHARS


class MessageType(str, Enum):
    HELLO = "hello"
    CAPTION = "caption"
    STATUS = "status"
    ERROR = "error"
    PONG = "pong"
    INGESTED = "ingested"
    ALERT = "alert"
    ACKED = "acked"
    ACK = "ack"
    SUBSCRIBE = "subscribe"
    PING = "ping"


SERVER_MESSAGE_TYPES = frozenset(
    {
        MessageType.HELLO,
        MessageType.CAPTION,
        MessageType.STATUS,
        MessageType.ERROR,
        MessageType.PONG,
        MessageType.INGESTED,
        MessageType.ALERT,
        MessageType.ACKED,
    }
)
CLIENT_MESSAGE_TYPES = frozenset({MessageType.SUBSCRIBE, MessageType.PING, MessageType.ACK})
MAX_ACK_BY_CHARS = 200


# --- decoded messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloMsg:
    server: str
    version: str
    streams: tuple[str, ...]  # every stream the server knows
    subscribed: tuple[str, ...] | None  # this connection's subscription; None = all streams
    time: float  # server wall clock, unix seconds


@dataclass(frozen=True, slots=True)
class CaptionMsg:
    stream: str
    seq: int
    state: CaptionState
    text: str
    start: float  # media time, seconds
    end: float
    score: float
    window: int  # window index behind the caption, -1 when unknown
    track: str = VIDEO_TRACK  # the stream's caption track ("video" when the field is absent)
    words: tuple[SpeechWord, ...] = ()  # speech: each word with its media time
    objects: tuple[SceneObject, ...] = ()  # scene describer: counted objects by class and motion
    sent: float | None = None  # server wall clock when published (unix s), for delivery latency


@dataclass(frozen=True, slots=True)
class StatusMsg:
    stream: str
    state: StreamState
    detail: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorMsg:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class PongMsg:
    pass


@dataclass(frozen=True, slots=True)
class IngestedMsg:
    """Ingest acknowledgement: ``frames`` of one message were queued; ``total`` so far."""

    stream: str
    frames: int
    total: int


@dataclass(frozen=True, slots=True)
class AlertMsg:
    id: str
    stream: str
    rule: str
    phase: AlertPhase
    severity: Severity
    caption_seq: int | None  # None for stream-health alerts
    start: float  # media time, seconds
    end: float | None  # None until the alert ends
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AckedMsg:
    """Someone acknowledged an alert (sent to every client that saw it)."""

    id: str
    by: str
    time: float  # server wall clock, unix seconds


@dataclass(frozen=True, slots=True)
class AckMsg:
    """Client → server: acknowledge an alert; ``by`` names who (default: the connection)."""

    id: str
    by: str | None = None


@dataclass(frozen=True, slots=True)
class SubscribeMsg:
    streams: tuple[str, ...] | None  # None = all streams
    # resume: per stream, the last seq the client has (every stored final after it comes first)
    since: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class PingMsg:
    pass


ServerMessage = HelloMsg | CaptionMsg | StatusMsg | ErrorMsg | PongMsg | IngestedMsg | AlertMsg | AckedMsg
ClientMessage = SubscribeMsg | PingMsg | AckMsg


# --- encoding ---------------------------------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> str:
    # allow_nan=False: a NaN/inf reaching the wire is a bug upstream and must be loud.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _header(kind: MessageType) -> dict[str, Any]:
    return {"type": kind.value, "v": WIRE_VERSION}


def encode_hello(
    *,
    version: str,
    streams: Iterable[str],
    time_s: float,
    subscribed: Iterable[str] | None = None,
) -> str:
    """The first message on every connection. ``time_s`` is the server's wall clock (unix s)."""
    return _dumps(
        _header(MessageType.HELLO)
        | {
            "server": SERVER_NAME,
            "version": version,
            "streams": list(streams),
            "subscribed": None if subscribed is None else list(subscribed),
            "time": round(time_s, 3),
        }
    )


def encode_caption(c: Caption, *, with_track: bool = False, sent: float | None = None) -> str:
    """A caption; start/end are media seconds rounded to the millisecond. ``track`` is sent only
    for a track other than ``video`` (or always, ``with_track``: JSON Lines files), so clients
    written before tracks see no new field. Speech captions carry their ``words`` with times.
    ``sent``: the server's wall clock (unix seconds) when it published the caption, so a client
    can measure its delivery latency."""
    msg = _header(MessageType.CAPTION) | {
        "stream": c.stream,
        "seq": c.seq,
        "state": CaptionState(c.state).value,
        "text": c.text,
        "start": round(c.start_s, 3),
        "end": round(c.end_s, 3),
        "score": round(c.score, 4),
        "window": c.window_index,
    }
    if c.track != VIDEO_TRACK or with_track:
        msg["track"] = c.track
    if c.words:
        msg["words"] = [{"w": w.text, "start": round(w.start_s, 3), "end": round(w.end_s, 3)} for w in c.words]
    if c.objects:
        msg["objects"] = objects_json(c.objects)
    if sent is not None:
        msg["sent"] = round(sent, 4)
    return _dumps(msg)


def objects_json(objects: Iterable[SceneObject]) -> list[dict[str, Any]]:
    """The wire form of a scene describer's objects (captions, JSON Lines, documents)."""
    return [{"label": o.label, "count": o.count, "motion": o.motion,
             "boxes": [[round(v, 4) for v in b] for b in o.boxes]} for o in objects]


def encode_status(s: Status) -> str:
    msg = _header(MessageType.STATUS) | {
        "stream": s.stream,
        "state": StreamState(s.state).value,
        "detail": s.detail,
    }
    if s.code is not None:
        msg["code"] = s.code
    return _dumps(msg)


def encode_error(code: str, detail: str) -> str:
    return _dumps(_header(MessageType.ERROR) | {"code": code, "detail": detail})


def encode_pong() -> str:
    return _dumps(_header(MessageType.PONG))


def encode_ingested(stream: str, frames: int, total: int) -> str:
    return _dumps(_header(MessageType.INGESTED) | {"stream": stream, "frames": frames, "total": total})


def encode_alert(a: Alert) -> str:
    msg = _header(MessageType.ALERT) | {
        "id": a.id, "stream": a.stream, "rule": a.rule, "phase": AlertPhase(a.phase).value,
        "severity": Severity(a.severity).value, "caption_seq": a.caption_seq,
        "start": round(a.start_s, 3), "end": None if a.end_s is None else round(a.end_s, 3),
    }
    if a.detail:
        msg["detail"] = a.detail
    return _dumps(msg)


def encode_acked(alert_id: str, by: str, time_s: float) -> str:
    return _dumps(_header(MessageType.ACKED) | {"id": alert_id, "by": by, "time": round(time_s, 3)})


def encode_ack(alert_id: str, by: str | None = None) -> str:
    """Client side: acknowledge an alert."""
    msg: dict[str, Any] = {"type": MessageType.ACK.value, "id": alert_id}
    if by is not None:
        msg["by"] = by
    return _dumps(msg)


def encode_subscribe(streams: Iterable[str] | None, since: Mapping[str, int] | None = None) -> str:
    """Client side: replace the subscription (``None`` = all streams); ``since``: resume these
    streams after the seq given for each."""
    obj: dict[str, Any] = {"type": MessageType.SUBSCRIBE.value, "streams": None if streams is None else list(streams)}
    if since:
        obj["since"] = dict(since)
    return _dumps(obj)


def encode_ping() -> str:
    """Client side: an application-level ping, answered by ``pong``."""
    return _dumps({"type": MessageType.PING.value})


# --- decoding ---------------------------------------------------------------------------------


def _load_object(text: str | bytes, *, max_bytes: int | None) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ProtocolError("binary messages are not supported; send JSON text")
    obj = jsonsafe.loads(text, JsonLimits(max_bytes=max_bytes, max_depth=MAX_CLIENT_JSON_DEPTH),
                         code=ErrorCode.BAD_MESSAGE)
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _message_type(obj: Mapping[str, Any], allowed: frozenset[MessageType]) -> MessageType:
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing or non-string 'type'")
    try:
        parsed = MessageType(kind)
    except ValueError:
        parsed = None
    if parsed not in allowed:
        names = ", ".join(sorted(t.value for t in allowed))
        raise ProtocolError(f"unknown message type {kind!r} (expected one of: {names})")
    return parsed


def _check_version(obj: Mapping[str, Any], *, required: bool) -> None:
    if "v" not in obj:
        if required:
            raise ProtocolError("missing 'v'")
        return
    v = obj["v"]
    if type(v) is not int:
        raise ProtocolError("'v' must be an integer")
    if v != WIRE_VERSION:
        raise ProtocolError(f"unsupported wire version {v} (this end speaks {WIRE_VERSION})")


# A field check returns the converted value or raises ProtocolError naming the field.
_Check = Callable[[str, Any], Any]


def _string(name: str, value: Any) -> str:
    if type(value) is not str:
        raise ProtocolError(f"'{name}' must be a string")
    return value


def _stream_id(name: str, value: Any) -> str:
    if type(value) is not str or not is_valid_stream_id(value):
        raise ProtocolError(f"'{name}' must be a stream id ({STREAM_ID_RULE})")
    return value


def _integer(minimum: int) -> _Check:
    def check(name: str, value: Any) -> int:
        if type(value) is not int or value < minimum:
            raise ProtocolError(f"'{name}' must be an integer >= {minimum}")
        return value

    return check


def _number(minimum: float | None = None) -> _Check:
    def check(name: str, value: Any) -> float:
        if type(value) not in (int, float) or (minimum is not None and value < minimum):
            bound = "" if minimum is None else f" >= {minimum:g}"
            raise ProtocolError(f"'{name}' must be a number{bound}")
        return float(value)

    return check


def _enum(enum: type[Enum]) -> _Check:
    def check(name: str, value: Any) -> Enum:
        try:
            return enum(value)
        except ValueError:
            names = ", ".join(m.value for m in enum)
            raise ProtocolError(f"'{name}' must be one of: {names}") from None

    return check


def _stream_list(nullable: bool) -> _Check:
    def check(name: str, value: Any) -> tuple[str, ...] | None:
        if value is None and nullable:
            return None
        if type(value) is not list:
            raise ProtocolError(
                f"'{name}' must be a list of stream ids" + (" or null" if nullable else "")
            )
        ids = [_stream_id(f"{name}[{i}]", item) for i, item in enumerate(value)]
        return tuple(dict.fromkeys(ids))  # de-duplicated, order kept

    return check


_TRACK_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _track(name: str, value: Any) -> str:
    if type(value) is not str or not _TRACK_RE.fullmatch(value):
        raise ProtocolError(f"'{name}' must be a track name (1-32 of a-z, 0-9, '_', '-', starting with a letter)")
    return value


MAX_WORDS = 1000  # words in one caption message


def _words(name: str, value: Any) -> tuple[SpeechWord, ...]:
    if type(value) is not list or len(value) > MAX_WORDS:
        raise ProtocolError(f"'{name}' must be a list of at most {MAX_WORDS} words")
    out = []
    for item in value:
        if type(item) is not dict or set(item) != {"w", "start", "end"}:
            raise ProtocolError(f"'{name}' items must be objects with w, start and end")
        out.append(SpeechWord(_string("w", item["w"]), _number(0)("start", item["start"]),
                              _number(0)("end", item["end"])))
    return tuple(out)


MAX_OBJECTS = 100  # object groups in one caption message
MAX_BOXES = 200  # boxes in one group


def _box(value: Any) -> tuple[float, float, float, float]:
    if type(value) is not list or len(value) != 4:
        raise ProtocolError("'boxes' items must be [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (_number(0)("box", v) for v in value)
    if not (x0 <= x1 <= 1.0 and y0 <= y1 <= 1.0):
        raise ProtocolError("'boxes' items must be normalised boxes with x0 <= x1 <= 1 and y0 <= y1 <= 1")
    return (x0, y0, x1, y1)


def _objects(name: str, value: Any) -> tuple[SceneObject, ...]:
    if type(value) is not list or len(value) > MAX_OBJECTS:
        raise ProtocolError(f"'{name}' must be a list of at most {MAX_OBJECTS} objects")
    out = []
    for item in value:
        if type(item) is not dict or not {"label", "count", "motion"} <= set(item) <= {
                "label", "count", "motion", "boxes"}:
            raise ProtocolError(f"'{name}' items must be objects with label, count, motion (and boxes)")
        motion = _string("motion", item["motion"])
        if motion not in MOTIONS:
            raise ProtocolError(f"'motion' must be one of {', '.join(MOTIONS)}")
        boxes = item.get("boxes", [])
        if type(boxes) is not list or len(boxes) > MAX_BOXES:
            raise ProtocolError(f"'boxes' must be a list of at most {MAX_BOXES} boxes")
        out.append(SceneObject(_short_string(64)("label", item["label"]), _integer(1)("count", item["count"]),
                               motion, tuple(_box(b) for b in boxes)))
    return tuple(out)


MAX_SINCE_STREAMS = 100


def _since(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be an object of stream id → seq")
    if len(value) > MAX_SINCE_STREAMS:
        raise ProtocolError(f"'{name}' names at most {MAX_SINCE_STREAMS} streams")
    check = _integer(0)
    return {_stream_id(f"{name} key", k): check(f"{name}.{k}", v) for k, v in value.items()}


def _optional_string(name: str, value: Any) -> str | None:
    return None if value is None else _string(name, value)


def _optional(check: _Check) -> _Check:
    def nullable(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return nullable


def _short_string(limit: int) -> _Check:
    def check(name: str, value: Any) -> str:
        if type(value) is not str or not 0 < len(value) <= limit:
            raise ProtocolError(f"'{name}' must be a string of 1..{limit} characters")
        return value

    return check


def _fields(
    obj: Mapping[str, Any],
    required: Mapping[str, _Check],
    optional: Mapping[str, _Check] | None = None,
) -> dict[str, Any]:
    optional = optional or {}
    extra = sorted(obj.keys() - required.keys() - optional.keys() - {"type", "v"})
    if extra:
        raise ProtocolError(f"unexpected field(s): {', '.join(extra)}")
    out: dict[str, Any] = {}
    for name, check in required.items():
        if name not in obj:
            raise ProtocolError(f"missing field '{name}'")
        out[name] = check(name, obj[name])
    for name, check in optional.items():
        if name in obj:
            out[name] = check(name, obj[name])
    return out


_SERVER_FIELDS: dict[MessageType, tuple[type, dict[str, _Check], dict[str, _Check]]] = {
    MessageType.HELLO: (
        HelloMsg,
        {
            "server": _string,
            "version": _string,
            "streams": _stream_list(nullable=False),
            "subscribed": _stream_list(nullable=True),
            "time": _number(0),
        },
        {},
    ),
    MessageType.CAPTION: (
        CaptionMsg,
        {
            "stream": _stream_id,
            "seq": _integer(0),
            "state": _enum(CaptionState),
            "text": _string,
            "start": _number(0),
            "end": _number(0),
            "score": _number(),
            "window": _integer(-1),
        },
        {"track": _track, "words": _words, "objects": _objects, "sent": _number(0)},
    ),
    MessageType.STATUS: (
        StatusMsg,
        {"stream": _stream_id, "state": _enum(StreamState), "detail": _string},
        {"code": _optional_string},
    ),
    MessageType.ERROR: (ErrorMsg, {"code": _string, "detail": _string}, {}),
    MessageType.PONG: (PongMsg, {}, {}),
    MessageType.INGESTED: (IngestedMsg, {"stream": _stream_id, "frames": _integer(0), "total": _integer(0)}, {}),
    MessageType.ALERT: (
        AlertMsg,
        {
            "id": _string,
            "stream": _stream_id,
            "rule": _string,
            "phase": _enum(AlertPhase),
            "severity": _enum(Severity),
            "caption_seq": _optional(_integer(0)),
            "start": _number(0),
            "end": _optional(_number(0)),
        },
        {"detail": _string},
    ),
    MessageType.ACKED: (AckedMsg, {"id": _string, "by": _string, "time": _number(0)}, {}),
}

_CLIENT_FIELDS: dict[MessageType, tuple[type, dict[str, _Check], dict[str, _Check]]] = {
    MessageType.SUBSCRIBE: (SubscribeMsg, {"streams": _stream_list(nullable=True)}, {"since": _since}),
    MessageType.PING: (PingMsg, {}, {}),
    MessageType.ACK: (AckMsg, {"id": _short_string(200)}, {"by": _short_string(MAX_ACK_BY_CHARS)}),
}


def decode_server_message(text: str | bytes) -> ServerMessage:
    """Parse a server → client message (for clients and tests). Raises ProtocolError."""
    obj = _load_object(text, max_bytes=None)
    kind = _message_type(obj, SERVER_MESSAGE_TYPES)
    _check_version(obj, required=True)
    cls, required, optional = _SERVER_FIELDS[kind]
    return cls(**_fields(obj, required, optional))


def decode_client_message(text: str | bytes) -> ClientMessage:
    """Parse a client → server message. ``v`` may be omitted; when present it must be 1.
    Raises ProtocolError (code ``bad_message``) with a detail fit to send back."""
    obj = _load_object(text, max_bytes=MAX_CLIENT_MESSAGE_BYTES)
    kind = _message_type(obj, CLIENT_MESSAGE_TYPES)
    _check_version(obj, required=False)
    cls, required, optional = _CLIENT_FIELDS[kind]
    return cls(**_fields(obj, required, optional))


def parse_stream_list(value: str | None) -> tuple[str, ...] | None:
    """Parse the ``streams`` query parameter (``a,b``); ``None`` (absent) means all streams.
    Blank items are ignored; a value naming no stream, or an invalid stream id (:mod:`streamcap.core.ids`),
    raises ProtocolError."""
    if value is None:
        return None
    ids = [item.strip() for item in value.split(",") if item.strip()]
    if not ids:
        raise ProtocolError("'streams' names no stream; leave it out to get all streams")
    return _stream_list(nullable=False)("streams", ids)
