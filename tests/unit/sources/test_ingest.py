"""Pure ingest logic: the JSON/binary message rules of /ingest and the push source's bounded,
drop-oldest queue with monotonic media time (simulated clock, no sockets)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from streamcap.core.errors import ProtocolError, SourceEnded
from streamcap.sources.ingest import (
    MAX_FPS,
    MIN_FPS,
    b64decode,
    check_frame,
    decode_image,
    image_size,
    parse_text_message,
)
from streamcap.sources.push import PushSource
from streamcap.sources.url import SourceKind, parse_source_url
from streamcap.core.types import StreamState
from tests.helpers.publish import encode, huge_png

JPEG = encode(np.full((24, 32, 3), 200, np.uint8))
PNG = encode(np.zeros((8, 8, 3), np.uint8), ".png")


def _msg(**fields) -> str:
    return json.dumps(fields)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_json_batch_gives_frames_and_options():
    batch = parse_text_message(_msg(frames=[_b64(JPEG), "data:image/png;base64," + _b64(PNG)], max_length=15,
                                    fps=5), max_frames=4, max_frame_bytes=1 << 20)
    assert batch.frames == (JPEG, PNG) and batch.max_length == 15 and batch.fps == 5.0


@pytest.mark.parametrize("text, code, words", [
    ("{nope", "bad_message", "malformed JSON"),
    ("[1, 2]", "bad_message", "JSON object"),
    (_msg(frames=[]), "bad_message", "non-empty"),
    (_msg(frames="abc"), "bad_message", "non-empty list"),
    (_msg(frames=[_b64(JPEG)], colour="red"), "bad_message", "unexpected field(s): colour"),
    (_msg(frames=[_b64(JPEG)] * 5), "too_large", "limit is 4"),
    (_msg(frames=[_b64(JPEG)], max_length=0), "bad_message", "max_length"),
    (_msg(frames=[_b64(JPEG)], max_length=True), "bad_message", "max_length"),
    (_msg(frames=[_b64(JPEG)], fps=-1), "bad_message", "fps"),
    (_msg(frames=[12]), "bad_frame", "frames[0] must be a base64 string"),
    (_msg(frames=[_b64(JPEG), "!!!"]), "bad_frame", "frames[1] is not valid base64"),
    (_msg(frames=[_b64(b"GIF89a....")]), "bad_frame", "not a JPEG or PNG"),
    (_msg(frames=[_b64(b"\xff\xd8\xff" + b"x" * 3000)]), "too_large", "limit"),
])
def test_bad_json_batches_say_what_is_wrong(text, code, words):
    with pytest.raises(ProtocolError) as err:
        parse_text_message(text, max_frames=4, max_frame_bytes=2048)
    assert err.value.code == code and words in err.value.detail


@pytest.mark.parametrize("fps", [1e-300, 5e-324, 0.05, 0, -1, 121, 1e300, 10 ** 40])
def test_an_fps_outside_a_meaningful_range_is_a_bad_message(fps):
    with pytest.raises(ProtocolError) as err:
        parse_text_message(_msg(frames=[_b64(JPEG)], fps=fps), max_frames=4, max_frame_bytes=1 << 20)
    assert err.value.code == "bad_message"
    assert f"'fps' must be a number from {MIN_FPS:g} to {MAX_FPS:g}" in err.value.detail


@pytest.mark.parametrize("fps", [MIN_FPS, 1, 29.97, MAX_FPS])
def test_an_fps_in_range_is_taken(fps):
    assert parse_text_message(_msg(frames=[_b64(JPEG)], fps=fps), max_frames=4,
                              max_frame_bytes=1 << 20).fps == float(fps)


@pytest.mark.parametrize("text, words", [
    ('{"frames": ["a"], "fps": ' + "1" * 5000 + "}", "characters; the limit is"),
    ('{"frames": ' + "[" * 10_000 + "]" * 10_000 + "}", "nested more than"),
    ('{"frames": ["a"], "fps": NaN}', "non-finite"),
    ('{"frames": ["a"], "frames": ["b"]}', "duplicate key"),
])
def test_hostile_json_is_a_bad_message_not_a_crash(text, words):
    with pytest.raises(ProtocolError) as err:
        parse_text_message(text, max_frames=4, max_frame_bytes=1 << 20)
    assert err.value.code == "bad_message" and words in err.value.detail


def test_image_size_reads_png_and_jpeg_headers_without_decoding():
    import cv2

    picture = np.zeros((37, 53, 3), np.uint8)
    assert image_size(encode(picture, ".png")) == (53, 37)
    assert image_size(encode(picture, ".jpg")) == (53, 37)
    ok, progressive = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and image_size(progressive.tobytes()) == (53, 37)
    assert image_size(huge_png(20000, 20000)) == (20000, 20000)
    for damaged in [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff" + b"\x00" * 100, b"\xff\xd8\xff\xd9", b"GIF89a"]:
        assert image_size(damaged) is None


def test_a_picture_over_max_pixels_is_refused_from_its_header():
    huge = huge_png(20000, 20000)
    with pytest.raises(ProtocolError) as err:
        check_frame(huge, 1 << 20, max_pixels=4096 * 4096)
    assert err.value.code == "too_many_pixels" and "20000x20000" in err.value.detail
    with pytest.raises(ProtocolError) as err:
        parse_text_message(_msg(frames=[_b64(JPEG), _b64(huge)]), max_frames=4, max_frame_bytes=1 << 20,
                           max_pixels=4096 * 4096)
    assert err.value.code == "too_many_pixels" and err.value.detail.startswith("frames[1]")
    with pytest.raises(ProtocolError) as err:  # decode_image checks the header itself too
        decode_image(huge, max_pixels=4096 * 4096)
    assert err.value.code == "too_many_pixels"
    with pytest.raises(ProtocolError) as err:
        check_frame(b"\xff\xd8\xff" + b"\x00" * 100, 1 << 20, max_pixels=100)
    assert err.value.code == "bad_frame" and "header" in err.value.detail
    assert check_frame(JPEG, 1 << 20, max_pixels=32 * 24) == JPEG  # exactly at the limit
    with pytest.raises(ProtocolError):
        check_frame(JPEG, 1 << 20, max_pixels=32 * 24 - 1)


def test_a_push_source_knows_since_when_it_has_no_publisher():
    clock = Clock()
    src = PushSource("cam", clock=clock)
    assert src.idle_since_ns == clock.ns  # idle from its creation
    src.publisher_joined("a")
    src.publisher_joined("b")
    assert src.idle_since_ns is None
    clock.ns += 5
    src.publisher_left("a")
    assert src.idle_since_ns is None  # b is still there
    clock.ns += 5
    src.publisher_left("b")
    assert src.idle_since_ns == clock.ns
    clock.ns += 5
    src.publisher_left("b")  # leaving twice does not move it
    assert src.idle_since_ns == clock.ns - 5


def test_binary_frames_are_checked_and_decoded_to_rgb():
    assert check_frame(JPEG, 1 << 20) == JPEG
    with pytest.raises(ProtocolError, match="not a JPEG or PNG") as err:
        check_frame(b"hello", 1 << 20)
    assert err.value.code == "bad_frame"
    with pytest.raises(ProtocolError) as err:
        check_frame(JPEG, 10)
    assert err.value.code == "too_large"
    image = decode_image(JPEG)
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    with pytest.raises(ProtocolError, match="could not be decoded") as err:
        decode_image(b"\xff\xd8\xff" + b"\x00" * 100)
    assert err.value.code == "bad_frame"
    with pytest.raises(ProtocolError) as err:
        b64decode("data:nocomma", "video")
    assert err.value.code == "bad_base64"


def test_push_is_a_live_source_kind_without_a_location():
    spec = parse_source_url("push:")
    assert spec.kind is SourceKind.PUSH and spec.live
    with pytest.raises(Exception, match="takes no location"):
        parse_source_url("push:somewhere")


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


def _image(v: int) -> np.ndarray:
    return np.full((4, 4, 3), v, np.uint8)


async def test_push_source_drops_the_oldest_when_full_and_keeps_media_time_moving_forward():
    clock, drops, states = Clock(), [], []
    src = PushSource("cam", max_queued_frames=3, clock=clock, on_drop=drops.append,
                     on_status=lambda s: states.append(s.state))
    assert states == [StreamState.STARTING]
    src.publisher_joined("p1")
    for i in range(5):
        clock.ns += 100_000_000  # 0.1 s apart
        assert src.push(_image(i), publisher="p1")
    assert drops == ["ingest_full", "ingest_full"]
    frames = [await src.recv() for _ in range(3)]
    assert [int(f.image[0, 0, 0]) for f in frames] == [2, 3, 4]  # the newest three
    assert [f.seq for f in frames] == [0, 1, 2]
    assert [round(f.pts_s, 3) for f in frames] == [0.2, 0.3, 0.4]
    assert states == [StreamState.STARTING, StreamState.LIVE]
    # a batch asks for spacing; an earlier pts than the last is pushed forward, never back
    src.push(_image(9), src.next_pts_s(0.5))
    src.push(_image(9), pts_s=0.0)
    a, b = await src.recv(), await src.recv()
    assert a.pts_s == pytest.approx(0.9) and b.pts_s > a.pts_s
    src.publisher_left("p1")
    assert states[-1] is StreamState.STALLED
    src.push(_image(1))
    assert states[-1] is StreamState.LIVE


async def test_a_closed_push_source_ends_its_reader_and_refuses_frames():
    src = PushSource("cam", max_queued_frames=2)
    reader = asyncio.create_task(src.recv())
    await src.aclose()
    with pytest.raises(SourceEnded):
        await asyncio.wait_for(reader, 5)
    assert src.push(_image(0)) is False
    assert src.state is StreamState.ENDED
