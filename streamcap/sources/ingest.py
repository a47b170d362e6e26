"""Websocket frame ingest, the pure part: what a client message on ``/ingest/{stream}`` means.

Two forms (docs/wire.md, "Frame ingest"):

* a **binary** message is one encoded image (JPEG or PNG);
* a **text** message is JSON ``{"frames": ["<base64 JPEG/PNG>", ...], "max_length": 15, "fps": 10}``:
  a batch of frames (spaced ``1/fps`` apart in media time), and optionally the caption length
  limit in tokens for this stream.

Everything wrong with a message is a :class:`~streamcap.core.errors.ProtocolError` whose code says
what (``bad_message``, ``bad_frame``, ``too_large``) and whose detail is fit to send back. No I/O;
image decoding is CPU work the caller runs off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from streamcap.core.errors import ProtocolError

#: magic numbers of the image formats we take
_SIGNATURES = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
MAX_LENGTH_LIMIT = 512
MAX_FPS = 120.0


@dataclass(frozen=True, slots=True)
class IngestBatch:
    frames: tuple[bytes, ...]  # encoded images
    max_length: int | None = None  # caption length limit (tokens) for the stream, when given
    fps: float | None = None  # spacing of the batch's frames in media time


def image_format(data: bytes) -> str | None:
    return next((name for sig, name in _SIGNATURES.items() if data.startswith(sig)), None)


def check_frame(data: bytes, max_frame_bytes: int, where: str = "frame") -> bytes:
    if len(data) > max_frame_bytes:
        raise ProtocolError(f"{where} is {len(data)} bytes; the limit is {max_frame_bytes}", code="too_large")
    if image_format(data) is None:
        raise ProtocolError(f"{where} is not a JPEG or PNG image", code="bad_frame")
    return data


def parse_text_message(text: str, *, max_frames: int, max_frame_bytes: int) -> IngestBatch:
    """The JSON form. Raises ProtocolError."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from exc
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
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= MAX_FPS):
        raise ProtocolError(f"'fps' must be a number in (0, {MAX_FPS:g}]")
    decoded = []
    # base64 grows data by 4/3: refuse an oversized string before decoding it
    max_b64 = (max_frame_bytes + 2) // 3 * 4 + 4
    for i, item in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(item, str):
            raise ProtocolError(f"{where} must be a base64 string", code="bad_frame")
        if len(item) > max_b64:
            raise ProtocolError(f"{where} is larger than the {max_frame_bytes}-byte frame limit", code="too_large")
        decoded.append(check_frame(b64decode(item, where, code="bad_frame"), max_frame_bytes, where))
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


def decode_image(data: bytes, where: str = "frame") -> np.ndarray:
    """An encoded JPEG/PNG → RGB uint8 H×W×3. Raises ProtocolError (``bad_frame``)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ProtocolError(f"{where} could not be decoded as an image", code="bad_frame")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
