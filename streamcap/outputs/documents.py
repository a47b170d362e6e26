"""The HTTP JSON documents, version 1: every JSON body the server sends is built here.

``/healthz`` (:func:`health`, :func:`health_error`, :func:`health_summary`), ``/v1/streams`` (:func:`stream_list`,
:func:`stream`), ``/v1/alerts`` (:func:`alert_list`, :func:`alert` — also the ack answer),
``POST /v1/captions`` as JSON (:func:`caption_list`), ``/v1/streams/{id}/chapters``
(:func:`chapters`), and the one error body (:func:`error`, :func:`refusal`).
``docs/schema/http-v1.json`` is the matching JSON Schema (a unit test keeps the two in step);
the websocket messages live in :mod:`streamcap.outputs.wire`.

A stream's health goes out with its ``url`` through :func:`streamcap.core.secrets.sanitize_url`
and its ``detail`` through :func:`~streamcap.core.secrets.redact_text` (whoever built it), so no
document shows a credential.

Pure: no I/O, no clock, no asyncio or aiohttp. Builders take value types (or plain values) and
return plain ``dict``s in the key order they are sent; :func:`dumps` is the one serialiser
(``allow_nan=False``: a NaN reaching a document is a bug upstream and must be loud).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import Enum
from http import HTTPStatus
from typing import Any, Protocol

from streamcap.core.errors import ErrorCode
from streamcap.core.secrets import redact_text, sanitize_url
from streamcap.core.types import Alert, Caption
from streamcap.outputs.chapters import Chapter
from streamcap.outputs.wire import objects_json

HTTP_DOCUMENTS_VERSION = 1


class AckedAlert(Protocol):
    """An alert's latest step with who acknowledged it (the hub's ``AlertRecord``)."""

    @property
    def alert(self) -> Alert: ...

    @property
    def acked_by(self) -> str | None: ...

    @property
    def acked_at(self) -> float | None: ...


def dumps(doc: Any) -> str:
    return json.dumps(doc, allow_nan=False)


def _plain(code: str) -> str:
    return code.value if isinstance(code, Enum) else code


# --- /healthz ----------------------------------------------------------------------------------


def _safe_health(health: Mapping[str, Any]) -> dict[str, Any]:
    """One stream's health with its URL sanitised and any URL or token in its detail hidden."""
    doc = dict(health)
    if isinstance(doc.get("url"), str):
        doc["url"] = sanitize_url(doc["url"])
    if isinstance(doc.get("detail"), str):
        doc["detail"] = redact_text(doc["detail"])
    return doc


def _safe_streams(streams: Mapping[str, Any]) -> dict[str, Any]:
    return {sid: _safe_health(h) if isinstance(h, Mapping) else h for sid, h in streams.items()}


def health(version: str, streams: Mapping[str, Any]) -> dict[str, Any]:
    """``/healthz`` when all is well (200): the health of every stream by id."""
    return {"status": "ok", "version": version, "streams": _safe_streams(streams)}


def health_summary(ok: bool) -> dict[str, Any]:
    """``/healthz`` for a caller without ``view`` (and ``auth.public_status`` off): whether all is
    well, nothing else (no version, no stream, no reason); the status code says the same."""
    return {"status": "ok" if ok else "error"}


def health_error(detail: str, *, version: str | None = None,
                 streams: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``/healthz`` when something is wrong: the pipeline has failed (503, with the version and,
    when they can still be read, the streams) or the health itself could not be read (500)."""
    doc: dict[str, Any] = {"status": "error", "detail": detail}
    if version is not None:
        doc["version"] = version
    if streams is not None:
        doc["streams"] = _safe_streams(streams)
    return doc


# --- /v1/streams ---------------------------------------------------------------------------------


def stream(stream_id: str, health: Mapping[str, Any]) -> dict[str, Any]:
    """One stream: its id, then its health fields (``POST /v1/streams`` answers this)."""
    return {"id": stream_id, **_safe_health(health)}


def stream_list(stream_ids: Iterable[str], health: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``GET /v1/streams``: every stream, in ``stream_ids`` order."""
    return {"streams": [stream(sid, health.get(sid, {})) for sid in stream_ids]}


# --- /v1/alerts ----------------------------------------------------------------------------------


def alert(record: AckedAlert) -> dict[str, Any]:
    """One recent alert (its latest step) and its acknowledgement; also the ack answer."""
    a = record.alert
    return {"id": a.id, "stream": a.stream, "rule": a.rule, "phase": a.phase.value, "severity": a.severity.value,
            "caption_seq": a.caption_seq, "start": round(a.start_s, 3),
            "end": None if a.end_s is None else round(a.end_s, 3), "detail": a.detail,
            "acked_by": record.acked_by, "acked_at": record.acked_at}


def alert_list(records: Iterable[AckedAlert]) -> dict[str, Any]:
    """``GET /v1/alerts``."""
    return {"alerts": [alert(r) for r in records]}


# --- /v1/captions, chapters ----------------------------------------------------------------------


def caption_list(finals: Iterable[Caption]) -> dict[str, Any]:
    """``POST /v1/captions`` (``format=json``): a clip's final captions, media seconds."""
    return {"captions": [_caption_item(c) for c in finals]}


def _caption_item(c: Caption) -> dict[str, Any]:
    item: dict[str, Any] = {"start": round(c.start_s, 3), "end": round(c.end_s, 3), "text": c.text,
                            "score": round(c.score, 4), "track": c.track}
    if c.words:
        item["words"] = [{"w": w.text, "start": round(w.start_s, 3), "end": round(w.end_s, 3)} for w in c.words]
    if c.objects:
        item["objects"] = objects_json(c.objects)
    return item


def chapters(stream_id: str, since_s: float, items: Iterable[Chapter]) -> dict[str, Any]:
    """``GET /v1/streams/{id}/chapters?since=S``."""
    return {"stream": stream_id, "since": since_s, "chapters": [c.to_dict() for c in items]}


# --- errors --------------------------------------------------------------------------------------


def error(code: str, detail: str) -> dict[str, Any]:
    """The one shape of an HTTP error body."""
    return {"error": {"code": _plain(code), "detail": detail}}


def refusal(status: HTTPStatus, reason: str) -> dict[str, Any]:
    """The body of an access refusal: 401 ``unauthorized``, anything else ``forbidden``."""
    code = ErrorCode.UNAUTHORIZED if status is HTTPStatus.UNAUTHORIZED else ErrorCode.FORBIDDEN
    return error(code, reason)
