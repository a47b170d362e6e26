"""Websocket frame ingest, the pure part: what a client message on ``/ingest/{stream}`` means.

Two forms (docs/wire.md, "Frame ingest"):

* a **binary** message is one encoded image (JPEG or PNG);
* a **text** message is JSON ``{"frames": ["<base64 JPEG/PNG>", ...], "max_length": 15, "fps": 10}``:
  a batch of frames (spaced ``1/fps`` apart in media time), and optionally the caption length
  limit in tokens for this stream.

Everything wrong with a message is a :class:`~streamcap.core.errors.ProtocolError` whose code says
what (``bad_message``, ``bad_frame``, ``too_large``, ``too_many_pixels``) and whose detail is fit to
send back. No I/O; image decoding is CPU work the caller runs off the event loop.

Bounds (each a named limit): the JSON itself (:mod:`streamcap.outputs.jsonsafe`: depth, number
length), ``fps`` from :data:`MIN_FPS` to :data:`MAX_FPS` (a spacing of 10 s to 8.3 ms: anything
else would put frames hours or nanoseconds apart in media time), ``max_length`` from 1 to
:data:`MAX_LENGTH_LIMIT`, encoded bytes per frame, and pixels per frame: the width and height are
read from the PNG ``IHDR`` / JPEG ``SOFn`` header (:func:`image_size`) and an image over
``max_pixels`` is refused *before* it is decoded (a 1 MB PNG can hold 20000x20000 pixels, 1.2 GB
decoded); the decoded picture is checked against the same limit again.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import numpy as np

from streamcap.core.errors import ErrorCode, ProtocolError
from streamcap.core.types import MAX_FPS, MIN_FPS
from streamcap.outputs import jsonsafe

#: magic numbers of the image formats we take
_SIGNATURES = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
MAX_LENGTH_LIMIT = 512
#: an ingest message is one object holding one list of strings
INGEST_JSON_DEPTH = 4
#: JPEG start-of-frame markers (SOF0..SOF15 but DHT C4, JPG C8 and DAC CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True, slots=True)
class IngestBatch:
    frames: tuple[bytes, ...]  # encoded images
    max_length: int | None = None  # caption length limit (tokens) for the stream, when given
    fps: float | None = None  # spacing of the batch's frames in media time


def image_format(data: bytes) -> str | None:
    return next((name for sig, name in _SIGNATURES.items() if data.startswith(sig)), None)


def check_frame(data: bytes, max_frame_bytes: int, where: str = "frame", *, max_pixels: int | None = None) -> bytes:
    """The encoded frame if it is a JPEG/PNG within the byte limit and, with ``max_pixels``, whose
    header declares at most that many pixels (read without decoding). Raises ProtocolError."""
    if len(data) > max_frame_bytes:
        raise ProtocolError(f"{where} is {len(data)} bytes; the limit is {max_frame_bytes}", code="too_large")
    if image_format(data) is None:
        raise ProtocolError(f"{where} is not a JPEG or PNG image", code="bad_frame")
    if max_pixels is not None:
        size = image_size(data)
        if size is None:
            raise ProtocolError(f"{where} has no readable image header (width and height)", code="bad_frame")
        check_pixels(size, max_pixels, where)
    return data


def check_pixels(size: tuple[int, int], max_pixels: int, where: str = "frame") -> None:
    """Raise ProtocolError(``too_many_pixels``) when a ``(width, height)`` picture is over ``max_pixels``."""
    width, height = size
    if width * height > max_pixels:
        raise ProtocolError(f"{where} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                            "(ingest.max_pixels)", code=ErrorCode.TOO_MANY_PIXELS)


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG ``IHDR`` or the first JPEG ``SOFn`` header, without decoding;
    None when the header is missing or damaged."""
    kind = image_format(data)
    if kind == "png":
        # signature (8), then the first chunk: length (4), "IHDR", width (4), height (4)
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return (width, height) if width and height else None
    if kind == "jpeg":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2  # after SOI
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # not at a marker: damaged
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return (width, height) if width and height else None
        i += 2 + length
    return None


def parse_text_message(text: str, *, max_frames: int, max_frame_bytes: int,
                       max_pixels: int | None = None) -> IngestBatch:
    """The JSON form. Raises ProtocolError."""
    obj = jsonsafe.loads(text, jsonsafe.JsonLimits(max_depth=INGEST_JSON_DEPTH), code=ErrorCode.BAD_MESSAGE)
    if not isinstance(obj, dict):
        raise ProtocolError("expected a JSON object with a 'frames' list")
    extra = sorted(set(obj) - {"frames", "max_length", "fps"})
    if extra:
        raise ProtocolError(f"unexpected field(s): {', '.join(extra)}")
    frames = obj.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ProtocolError("'frames' must be a non-empty list of base64 images")
    if len(frames) > max_frames:
        raise ProtocolError(f"{len(frames)} frames in one message; the limit is {max_frames}", code="too_large")
    max_length = obj.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or not 1 <= max_length <= MAX_LENGTH_LIMIT):
        raise ProtocolError(f"'max_length' must be an integer from 1 to {MAX_LENGTH_LIMIT}")
    fps = obj.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float)
                            or not MIN_FPS <= fps <= MAX_FPS):
        raise ProtocolError(f"'fps' must be a number from {MIN_FPS:g} to {MAX_FPS:g} (frames per second of media)")
    decoded = []
    # base64 grows data by 4/3: refuse an oversized string before decoding it
    max_b64 = (max_frame_bytes + 2) // 3 * 4 + 4
    for i, item in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(item, str):
            raise ProtocolError(f"{where} must be a base64 string", code="bad_frame")
        if len(item) > max_b64:
            raise ProtocolError(f"{where} is larger than the {max_frame_bytes}-byte frame limit", code="too_large")
        decoded.append(check_frame(b64decode(item, where, code="bad_frame"), max_frame_bytes, where,
                                   max_pixels=max_pixels))
    return IngestBatch(tuple(decoded), max_length, None if fps is None else float(fps))


def b64decode(text: str, where: str, *, code: str = "bad_base64") -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is allowed). Raises ProtocolError."""
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise ProtocolError(f"{where}: a data URL without a comma", code=code)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{where} is not valid base64: {exc}", code=code) from exc


def decode_image(data: bytes, where: str = "frame", *, max_pixels: int | None = None) -> np.ndarray:
    """An encoded JPEG/PNG → RGB uint8 H×W×3. With ``max_pixels`` the header is checked first
    (:func:`check_frame`) and the decoded picture again. Raises ProtocolError (``bad_frame``,
    ``too_many_pixels``)."""
    import cv2

    if max_pixels is not None:
        size = image_size(data)
        if size is None:
            raise ProtocolError(f"{where} has no readable image header (width and height)", code="bad_frame")
        check_pixels(size, max_pixels, where)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ProtocolError(f"{where} could not be decoded as an image", code="bad_frame")
    if max_pixels is not None:  # the decoder's own view, in case a header lied
        check_pixels((image.shape[1], image.shape[0]), max_pixels, where)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
