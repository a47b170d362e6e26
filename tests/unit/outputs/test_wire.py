"""streamcap.outputs.wire: encoders match the JSON Schema, decode(encode(x)) round-trips, and every
malformed message is a ProtocolError with code bad_message (and invalid per the schema)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from streamcap.outputs import wire
from streamcap.core.errors import ProtocolError
from streamcap.core.types import Alert, AlertPhase, Caption, CaptionState, Severity, Status, StreamState

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "schema" / "wire-v1.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    doc = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


def _validator(schema: dict, definition: str) -> jsonschema.Draft202012Validator:
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(sub)


CAPTIONS = [
    Caption("cam1", 0, CaptionState.PARTIAL, "a red circle moves left", 0.0, 3.0, -0.25, 0),
    Caption(
        "cam1", 12, CaptionState.FINAL, "a blue square stays still", 12.3004, 15.3, -0.0123456, 7
    ),
    Caption("cam_2.b-c", 3, CaptionState.FINAL, 'quotes " and \\ and \n newline', 1.0, 1.0),
    Caption("cam1", 13, CaptionState.FINAL, "hello everyone", 2.0, 4.5, -0.1, 3, track="speech"),
]
STATUSES = [
    Status("cam1", StreamState.LIVE),
    Status("cam1", StreamState.RECONNECTING, "connection refused", code="source_error"),
    Status("demo", StreamState.ERROR, "bad url", code="bad_source_url", extra={"attempt": 3}),
]


# --- encoding + schema ----------------------------------------------------------------------


def test_encoded_server_messages_validate_against_schema(schema: dict) -> None:
    validator = _validator(schema, "ServerMessage")
    messages = [
        wire.encode_hello(version="0.1.0", streams=["cam1", "demo"], time_s=1_700_000_000.1234),
        wire.encode_hello(version="0.1.0", streams=[], time_s=0.0, subscribed=["cam1"]),
        *(wire.encode_caption(c) for c in CAPTIONS),
        *(wire.encode_status(s) for s in STATUSES),
        wire.encode_error("bad_message", "malformed JSON"),
        wire.encode_pong(),
    ]
    for text in messages:
        validator.validate(json.loads(text))


def test_encoded_client_messages_validate_against_schema(schema: dict) -> None:
    validator = _validator(schema, "ClientMessage")
    for text in (
        wire.encode_subscribe(["a", "b"]),
        wire.encode_subscribe(None),
        wire.encode_ping(),
    ):
        validator.validate(json.loads(text))


def test_caption_times_are_rounded_to_milliseconds() -> None:
    obj = json.loads(wire.encode_caption(CAPTIONS[1]))
    assert obj["start"] == 12.3
    assert obj["end"] == 15.3
    assert obj["type"] == "caption" and obj["v"] == wire.WIRE_VERSION


def test_status_omits_code_when_none_and_never_sends_extra() -> None:
    assert "code" not in json.loads(wire.encode_status(STATUSES[0]))
    obj = json.loads(wire.encode_status(STATUSES[2]))
    assert obj["code"] == "bad_source_url"
    assert "extra" not in obj and "attempt" not in obj


def test_encoding_a_non_finite_number_fails_loudly() -> None:
    bad = Caption("cam1", 1, CaptionState.FINAL, "x", 0.0, 1.0, float("nan"))
    with pytest.raises(ValueError):
        wire.encode_caption(bad)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("caption", CAPTIONS)
def test_caption_round_trips(caption: Caption) -> None:
    msg = wire.decode_server_message(wire.encode_caption(caption))
    assert msg == wire.CaptionMsg(
        stream=caption.stream,
        seq=caption.seq,
        state=caption.state,
        text=caption.text,
        start=round(caption.start_s, 3),
        end=round(caption.end_s, 3),
        score=round(caption.score, 4),
        window=caption.window_index,
        track=caption.track,
    )
    assert isinstance(msg.state, CaptionState)


def test_video_track_is_not_on_the_wire_so_old_clients_see_no_new_field() -> None:
    video = json.loads(wire.encode_caption(CAPTIONS[0]))
    speech = json.loads(wire.encode_caption(CAPTIONS[-1]))
    assert "track" not in video and speech["track"] == "speech"
    assert wire.decode_server_message(json.dumps(video)).track == "video"


def test_a_bad_track_name_is_refused() -> None:
    bad = json.loads(wire.encode_caption(CAPTIONS[-1])) | {"track": "Speech Track"}
    with pytest.raises(ProtocolError, match="track"):
        wire.decode_server_message(json.dumps(bad))


@pytest.mark.parametrize("status", STATUSES)
def test_status_round_trips(status: Status) -> None:
    msg = wire.decode_server_message(wire.encode_status(status))
    assert msg == wire.StatusMsg(status.stream, status.state, status.detail, status.code)
    assert isinstance(msg.state, StreamState)


def test_hello_error_and_pong_round_trip() -> None:
    hello = wire.decode_server_message(
        wire.encode_hello(version="9.9", streams=["a", "b"], time_s=12.0, subscribed=["b"])
    )
    assert hello == wire.HelloMsg("streamcap", "9.9", ("a", "b"), ("b",), 12.0)
    all_streams = wire.decode_server_message(wire.encode_hello(version="9.9", streams=[], time_s=1))
    assert isinstance(all_streams, wire.HelloMsg) and all_streams.subscribed is None
    assert wire.decode_server_message(wire.encode_error("bad_message", "nope")) == wire.ErrorMsg(
        "bad_message", "nope"
    )
    assert wire.decode_server_message(wire.encode_pong()) == wire.PongMsg()


def test_client_messages_round_trip() -> None:
    assert wire.decode_client_message(wire.encode_subscribe(["a", "b"])) == wire.SubscribeMsg(
        ("a", "b")
    )
    assert wire.decode_client_message(wire.encode_subscribe(None)) == wire.SubscribeMsg(None)
    assert wire.decode_client_message(wire.encode_ping()) == wire.PingMsg()


def test_client_message_may_carry_version_one_and_duplicate_streams_collapse() -> None:
    msg = wire.decode_client_message('{"type":"subscribe","v":1,"streams":["b","a","b"]}')
    assert msg == wire.SubscribeMsg(("b", "a"))
    assert wire.decode_client_message('{"v":1,"type":"ping"}') == wire.PingMsg()


# --- malformed client messages ----------------------------------------------------------------

# (case id, text, whether the JSON Schema can see the problem: parse errors and size cannot)
MALFORMED_CLIENT = [
    ("not json", "{nope", False),
    ("truncated", '{"type":"ping"', False),
    ("empty", "", False),
    ("array", '[{"type":"ping"}]', True),
    ("string", '"ping"', True),
    ("null", "null", True),
    ("missing type", '{"streams":["a"]}', True),
    ("type not a string", '{"type":7}', True),
    ("unknown type", '{"type":"unsubscribe","streams":["a"]}', True),
    ("server type from client", '{"type":"pong","v":1}', True),
    ("wrong version", '{"type":"ping","v":2}', True),
    ("version as string", '{"type":"ping","v":"1"}', True),
    ("version as bool", '{"type":"ping","v":true}', True),
    ("extra field", '{"type":"ping","id":1}', True),
    ("missing streams", '{"type":"subscribe"}', True),
    ("streams not a list", '{"type":"subscribe","streams":"a,b"}', True),
    ("stream not a string", '{"type":"subscribe","streams":["a",3]}', True),
    ("empty stream id", '{"type":"subscribe","streams":[""]}', True),
    ("overlong stream id", '{"type":"subscribe","streams":["' + "x" * 257 + '"]}', True),
    ("duplicate key", '{"type":"ping","type":"ping"}', False),
    ("NaN", '{"type":"ping","v":NaN}', False),
    ("huge float", '{"type":"ping","v":1e400}', False),
    ("integer over 4300 digits", '{"type":"ping","v":' + "1" * 5000 + "}", False),
    ("deeply nested", '{"type":"subscribe","streams":' + "[" * 50_000 + "]" * 50_000 + "}", False),
    ("unclosed deep nesting", "[" * 100_000, False),
    (
        "oversized",
        '{"type":"subscribe","streams":["' + "x" * 200 + '"' + ',"y"' * 17_000 + "]}",
        False,
    ),
]


@pytest.mark.parametrize(
    ("text", "schema_sees_it"),
    [c[1:] for c in MALFORMED_CLIENT],
    ids=[c[0] for c in MALFORMED_CLIENT],
)
def test_malformed_client_message_is_bad_message(
    text: str, schema_sees_it: bool, schema: dict
) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode_client_message(text)
    assert info.value.code == "bad_message"
    assert info.value.detail  # a reason fit to send back
    if schema_sees_it:
        assert not _validator(schema, "ClientMessage").is_valid(json.loads(text))


def test_oversized_limit_counts_utf8_bytes_not_characters() -> None:
    def subscribe(n_ids: int, char: str) -> str:  # each id: 60 characters (ASCII: 60 bytes; 'é': 120)
        return '{"type":"subscribe","streams":[' + ",".join(['"' + char * 60 + '"'] * n_ids) + "]}"

    assert isinstance(wire.decode_client_message(subscribe(250, "c")), wire.SubscribeMsg)
    too_big = subscribe(700, "é")  # under the limit in characters, over it in bytes
    assert len(too_big) < wire.MAX_CLIENT_MESSAGE_BYTES < len(too_big.encode())
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.decode_client_message(too_big)


def test_binary_client_message_is_bad_message() -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode_client_message(b'{"type":"ping"}')
    assert info.value.code == "bad_message"


# --- malformed server messages ----------------------------------------------------------------

_GOOD_CAPTION = json.loads(wire.encode_caption(CAPTIONS[1]))

MALFORMED_SERVER = [
    ("missing v", {k: v for k, v in _GOOD_CAPTION.items() if k != "v"}),
    ("wrong v", _GOOD_CAPTION | {"v": 2}),
    ("client type", {"type": "ping", "v": 1}),
    ("bad state", _GOOD_CAPTION | {"state": "maybe"}),
    ("seq float", _GOOD_CAPTION | {"seq": 1.5}),
    ("seq negative", _GOOD_CAPTION | {"seq": -1}),
    ("seq bool", _GOOD_CAPTION | {"seq": True}),
    ("start string", _GOOD_CAPTION | {"start": "1.0"}),
    ("start negative", _GOOD_CAPTION | {"start": -0.5}),
    ("window below -1", _GOOD_CAPTION | {"window": -2}),
    ("text null", _GOOD_CAPTION | {"text": None}),
    ("extra field", _GOOD_CAPTION | {"wall": 1.0}),
    ("missing text", {k: v for k, v in _GOOD_CAPTION.items() if k != "text"}),
    (
        "status bad state",
        {"type": "status", "v": 1, "stream": "a", "state": "sleeping", "detail": ""},
    ),
    (
        "status code number",
        {"type": "status", "v": 1, "stream": "a", "state": "live", "detail": "", "code": 4},
    ),
    (
        "hello streams null",
        {
            "type": "hello",
            "v": 1,
            "server": "streamcap",
            "version": "1",
            "streams": None,
            "subscribed": None,
            "time": 1,
        },
    ),
    ("error missing detail", {"type": "error", "v": 1, "code": "bad_message"}),
]


@pytest.mark.parametrize(
    "obj", [c[1] for c in MALFORMED_SERVER], ids=[c[0] for c in MALFORMED_SERVER]
)
def test_malformed_server_message_is_rejected_by_decoder_and_schema(
    obj: dict, schema: dict
) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_server_message(json.dumps(obj))
    assert not _validator(schema, "ServerMessage").is_valid(obj)


def test_status_with_null_code_is_accepted_by_decoder_and_schema(schema: dict) -> None:
    obj = {
        "type": "status",
        "v": 1,
        "stream": "a",
        "state": "stalled",
        "detail": "no frames",
        "code": None,
    }
    assert wire.decode_server_message(json.dumps(obj)) == wire.StatusMsg(
        "a", StreamState.STALLED, "no frames"
    )
    assert _validator(schema, "ServerMessage").is_valid(obj)


# --- query parameter --------------------------------------------------------------------------


def test_parse_stream_list_splits_trims_and_dedupes() -> None:
    assert wire.parse_stream_list(None) is None
    assert wire.parse_stream_list("a, b,,a") == ("a", "b")


@pytest.mark.parametrize("value", ["", " , ", "x" * 257])
def test_parse_stream_list_rejects_empty_or_overlong(value: str) -> None:
    with pytest.raises(ProtocolError):
        wire.parse_stream_list(value)


# --- alerts ----------------------------------------------------------------------------------

ALERTS = [
    Alert("a1", "cam1", "fall", AlertPhase.START, Severity.CRITICAL, 12, 10.0, None),
    Alert("a1", "cam1", "fall", AlertPhase.END, Severity.CRITICAL, 14, 10.0, 24.1234),
    Alert("h7", "door", "health:stalled", AlertPhase.START, Severity.WARNING, None, 3.5, None, "no frame for 2.0 s"),
]


def test_alert_messages_round_trip_and_validate(schema: dict) -> None:
    server = _validator(schema, "ServerMessage")
    for alert in ALERTS:
        text = wire.encode_alert(alert)
        server.validate(json.loads(text))
        msg = wire.decode_server_message(text)
        assert isinstance(msg, wire.AlertMsg)
        assert (msg.id, msg.stream, msg.rule, msg.phase, msg.severity, msg.caption_seq, msg.detail) == (
            alert.id, alert.stream, alert.rule, alert.phase, alert.severity, alert.caption_seq, alert.detail)
        assert msg.start == round(alert.start_s, 3)
        assert msg.end == (None if alert.end_s is None else round(alert.end_s, 3))
    acked = wire.encode_acked("a1", "ops@desk", 1_700_000_000.5)
    server.validate(json.loads(acked))
    assert wire.decode_server_message(acked) == wire.AckedMsg("a1", "ops@desk", 1_700_000_000.5)


def test_ack_client_message(schema: dict) -> None:
    client = _validator(schema, "ClientMessage")
    for text in (wire.encode_ack("a1"), wire.encode_ack("a1", by="maria")):
        client.validate(json.loads(text))
    assert wire.decode_client_message(wire.encode_ack("a1", by="maria")) == wire.AckMsg("a1", "maria")
    for bad in ('{"type":"ack"}', '{"type":"ack","id":""}', '{"type":"ack","id":"a","by":7}',
                '{"type":"ack","id":"a","extra":1}'):
        with pytest.raises(ProtocolError):
            wire.decode_client_message(bad)
        assert not client.is_valid(json.loads(bad))


def test_speech_words_round_trip_with_their_times_and_match_the_schema(schema) -> None:
    from streamcap.core.types import SpeechWord

    words = (SpeechWord("Hello,", 1.0, 1.25), SpeechWord("world.", 1.3, 1.9))
    caption = Caption("cam", 7, CaptionState.FINAL, "Hello, world.", 1.0, 1.9, track="speech", words=words)
    text = wire.encode_caption(caption)
    msg = wire.decode_server_message(text)
    assert msg.words == words and msg.track == "speech"
    _validator(schema, "ServerMessage").validate(json.loads(text))


@pytest.mark.parametrize("words", [[{"w": "a", "start": -1, "end": 1}], [{"w": 3, "start": 0, "end": 1}],
                                   [{"w": "a", "start": 0}], "a b", [{"w": "a"}] * 1001])
def test_malformed_speech_words_are_refused(words) -> None:
    bad = json.loads(wire.encode_caption(CAPTIONS[-1])) | {"words": words}
    with pytest.raises(ProtocolError, match="words|w|start"):
        wire.decode_server_message(json.dumps(bad))


def test_scene_objects_round_trip_and_match_the_schema(schema) -> None:
    from streamcap.core.types import SceneObject

    objects = (SceneObject("person", 2, "left", ((0.1, 0.2, 0.2, 0.6), (0.5, 0.25, 0.6, 0.7))),
               SceneObject("car", 1, "still", ((0.0, 0.5, 0.3, 0.8),)))
    caption = Caption("cam", 3, CaptionState.PARTIAL, "two people walk left and a car is parked", 0.0, 2.0,
                      objects=objects)
    text = wire.encode_caption(caption)
    msg = wire.decode_server_message(text)
    assert msg.objects == objects
    _validator(schema, "ServerMessage").validate(json.loads(text))
    # a caption without objects sends no field (clients written before it see nothing new)
    assert "objects" not in json.loads(wire.encode_caption(CAPTIONS[-1]))


@pytest.mark.parametrize("objects", [
    [{"label": "person", "count": 0, "motion": "left"}],
    [{"label": "person", "count": 1, "motion": "sideways"}],
    [{"label": "", "count": 1, "motion": "left"}],
    [{"label": "person", "count": 1}],
    [{"label": "person", "count": 1, "motion": "left", "boxes": [[0.5, 0.1, 0.2, 0.3]]}],
    [{"label": "person", "count": 1, "motion": "left", "boxes": [[0, 0, 2, 1]]}],
    [{"label": "person", "count": 1, "motion": "left", "extra": 1}],
    [{"label": "person", "count": 1, "motion": "left"}] * 101,
    "person",
])
def test_malformed_scene_objects_are_refused_by_the_decoder_and_the_schema(schema, objects) -> None:
    bad = json.loads(wire.encode_caption(CAPTIONS[-1])) | {"objects": objects}
    with pytest.raises(ProtocolError):
        wire.decode_server_message(json.dumps(bad))
    boxes = [b for o in objects if isinstance(o, dict) for b in o.get("boxes", [])]
    if not any(b[0] > b[2] for b in boxes):  # corner order is the decoder's check, not the schema's
        assert not _validator(schema, "ServerMessage").is_valid(bad)
