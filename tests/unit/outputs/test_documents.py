"""streamcap.outputs.documents: every HTTP JSON body validates against docs/schema/http-v1.json,
serialises the way the server has always sent it, and the schema's error codes are ErrorCode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import jsonschema
import pytest

from streamcap.core.errors import ErrorCode
from streamcap.core.types import Alert, AlertPhase, Caption, CaptionState, Severity, SpeechWord
from streamcap.outputs import documents
from streamcap.outputs.chapters import Chapter

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "schema" / "http-v1.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    doc = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


def _validate(schema: dict, definition: str, doc: object) -> None:
    """``doc`` as sent (serialised and parsed back) is valid under ``definition`` and the whole schema."""
    sent = json.loads(documents.dumps(doc))
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    jsonschema.Draft202012Validator(sub).validate(sent)
    if definition != "Refusal":
        jsonschema.Draft202012Validator(schema).validate(sent)


def _invalid(schema: dict, definition: str, doc: object) -> bool:
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return not jsonschema.Draft202012Validator(sub).is_valid(doc)


HEALTH = {
    "cam1": {"state": "live", "detail": "", "url": "rtsp://cam1/stream", "frames_in": 120, "windows_captioned": 7,
             "last_frame_age_s": 0.04, "last_caption_age_s": 1.2, "last_final": "a red circle",
             "media_s": 12.5, "last_window_end_s": 12.0},
    "demo": {"state": "reconnecting", "detail": "connection refused", "last_caption_age_s": None},
}


@dataclass(frozen=True)
class Record:
    alert: Alert
    acked_by: str | None = None
    acked_at: float | None = None


ALERTS = [
    Record(Alert("a1", "cam1", "person", AlertPhase.START, Severity.WARNING, 4, 12.30049)),
    Record(Alert("a2", "demo", "stalled", AlertPhase.END, Severity.CRITICAL, None, 1.0, 9.87654, "no frames"),
           "ops", 1_700_000_000.5),
]


def test_health_documents_validate_and_keep_their_key_order(schema: dict) -> None:
    ok = documents.health("0.1.0", HEALTH)
    _validate(schema, "Health", ok)
    assert list(ok) == ["status", "version", "streams"] and ok["status"] == "ok"
    failed = documents.health_error("pipeline stopped: engine crashed", version="0.1.0", streams=HEALTH)
    _validate(schema, "HealthError", failed)
    assert list(failed) == ["status", "detail", "version", "streams"]
    _validate(schema, "HealthError", documents.health_error("pipeline stopped", version="0.1.0"))
    unreadable = documents.health_error("RuntimeError: boom")
    _validate(schema, "HealthError", unreadable)
    assert documents.dumps(unreadable) == '{"status": "error", "detail": "RuntimeError: boom"}'


def test_stream_documents_put_the_id_first_and_list_in_the_order_given(schema: dict) -> None:
    one = documents.stream("cam1", HEALTH["cam1"])
    _validate(schema, "Stream", one)
    assert list(one)[0] == "id"
    listed = documents.stream_list(["demo", "cam1", "gone"], HEALTH)
    _validate(schema, "StreamList", {"streams": listed["streams"][:2]})
    assert [s["id"] for s in listed["streams"]] == ["demo", "cam1", "gone"]
    assert listed["streams"][2] == {"id": "gone"}  # no health (yet): just the id
    assert _invalid(schema, "Stream", {"state": "live"})  # an id is required


def test_alert_documents_round_times_and_carry_the_acknowledgement(schema: dict) -> None:
    doc = documents.alert_list(ALERTS)
    _validate(schema, "AlertList", doc)
    first, second = doc["alerts"]
    assert first["start"] == 12.3 and first["end"] is None and first["acked_by"] is None
    assert second["end"] == 9.877 and second["acked_by"] == "ops" and second["phase"] == "end"
    _validate(schema, "Alert", documents.alert(ALERTS[1]))


def test_caption_list_rounds_times_to_ms_and_scores_to_4_places(schema: dict) -> None:
    finals = [Caption("clip", 0, CaptionState.FINAL, "a red circle", 0.0, 3.00049, -0.123456),
              Caption("clip", 1, CaptionState.FINAL, 'quotes " and ünïcødé', 3.0, 6.0)]
    doc = documents.caption_list(finals)
    _validate(schema, "CaptionList", doc)
    assert doc["captions"][0] == {"start": 0.0, "end": 3.0, "text": "a red circle", "score": -0.1235,
                                  "track": "video"}


def test_caption_list_carries_speech_words_with_their_times(schema: dict) -> None:
    words = (SpeechWord("Hello", 1.0, 1.40049), SpeechWord("there.", 1.5, 2.0))
    doc = documents.caption_list([Caption("clip", 0, CaptionState.FINAL, "Hello there.", 1.0, 2.0,
                                          track="speech", words=words)])
    _validate(schema, "CaptionList", doc)
    assert doc["captions"][0]["track"] == "speech"
    assert doc["captions"][0]["words"] == [{"w": "Hello", "start": 1.0, "end": 1.4},
                                           {"w": "there.", "start": 1.5, "end": 2.0}]


def test_chapters_document_validates(schema: dict) -> None:
    doc = documents.chapters("cam1", 2.5, [Chapter(0.0, 6.0004, "a red circle", 3), Chapter(6.0, 9.0, "a square", 1)])
    _validate(schema, "Chapters", doc)
    assert doc["chapters"][0] == {"start": 0.0, "end": 6.0, "title": "a red circle", "captions": 3}
    _validate(schema, "Chapters", documents.chapters("cam1", 0.0, []))


def test_error_body_sends_the_plain_code_string(schema: dict) -> None:
    doc = documents.error(ErrorCode.BAD_STREAM_ID, "bad id")
    _validate(schema, "Error", doc)
    assert documents.dumps(doc) == '{"error": {"code": "bad_stream_id", "detail": "bad id"}}'
    assert type(doc["error"]["code"]) is str
    assert _invalid(schema, "Error", {"error": {"code": "no_such_code", "detail": "x"}})


@pytest.mark.parametrize(("status", "code"), [(HTTPStatus.UNAUTHORIZED, "unauthorized"),
                                              (HTTPStatus.FORBIDDEN, "forbidden")])
def test_refusal_body_names_unauthorized_or_forbidden(schema: dict, status: HTTPStatus, code: str) -> None:
    doc = documents.refusal(status, "view needs a token")
    _validate(schema, "Refusal", doc)
    assert doc == {"error": {"code": code, "detail": "view needs a token"}}
    assert _invalid(schema, "Refusal", documents.error(ErrorCode.NOT_FOUND, "x"))


def test_schema_lists_exactly_the_error_codes(schema: dict) -> None:
    assert schema["$defs"]["ErrorCode"]["enum"] == [c.value for c in ErrorCode]


def test_a_non_finite_number_is_refused_loudly() -> None:
    with pytest.raises(ValueError):
        documents.dumps(documents.health("0.1.0", {"cam1": {"state": "live", "media_s": float("nan")}}))
