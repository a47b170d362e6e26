"""Pure ingest logic: the JSON/binary message rules of /ingest and the push source's bounded,
drop-oldest queue with monotonic media time (simulated clock, no sockets)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from streamcap.core.errors import ProtocolError, SourceEnded
from streamcap.sources.ingest import b64decode, check_frame, decode_image, parse_text_message
from streamcap.sources.push import PushSource
from streamcap.sources.url import SourceKind, parse_source_url
from streamcap.core.types import StreamState
from tests.helpers.publish import encode

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
