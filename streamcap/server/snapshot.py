"""A stream's picture as a JPEG: the latest frame, optionally with the scene describer's object
boxes drawn in (``GET /v1/streams/{id}/snapshot.jpg``).

Pure and synchronous: numpy and OpenCV only, no I/O, no event loop; the route runs
:func:`render_snapshot` in a worker thread (it costs a few milliseconds at full width). It lives
in ``server/`` rather than ``outputs/`` because the import contract keeps ``cv2`` out of the pure
layers.

Geometry: ring frames are the engine's square input (e.g. 224×224). :func:`snapshot_size` stretches
them back to the source's aspect ratio when it is known and scales to a requested width (bounded
by :data:`MIN_WIDTH`..:data:`MAX_WIDTH`, the height by :data:`MAX_HEIGHT`). Boxes are normalised
``(x0, y0, x1, y1)`` in 0..1 of the picture, so they are drawn after scaling, in output pixels.
Labels are ASCII (OpenCV's Hershey font has no arrows): ``person ->`` for a person moving right.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from streamcap.core.types import SceneObject

MIN_WIDTH, MAX_WIDTH = 64, 1920
MAX_HEIGHT = 1920
JPEG_QUALITY = 80
#: motion words as drawn on a box label (ASCII only); ``still`` and ``unknown`` draw nothing
MOTION_MARKS = {"left": "<-", "right": "->", "towards": "towards", "away": "away", "still": "", "moving": "moving",
                "unknown": ""}
#: box colours (RGB), one per label, chosen by a stable hash of the label
PALETTE = ((255, 196, 0), (0, 220, 255), (255, 64, 160), (120, 255, 80), (255, 120, 40), (170, 120, 255))


def snapshot_size(frame_hw: tuple[int, int], *, width: int | None = None,
                  aspect: float | None = None) -> tuple[int, int]:
    """``(width, height)`` of the picture for a frame of ``frame_hw`` (height, width): stretched
    to ``aspect`` (width / height of the source) when given, else the frame's own shape; scaled
    to ``width`` when given. Both sides stay within the module's bounds."""
    fh, fw = frame_hw
    ratio = aspect if aspect is not None and aspect > 0 else fw / fh
    if width is None:
        out_h = fh
        out_w = round(fh * ratio)
    else:
        out_w = width
        out_h = round(width / ratio)
    out_w = min(max(out_w, MIN_WIDTH), MAX_WIDTH)
    out_h = min(max(out_h, 1), MAX_HEIGHT)
    return out_w, out_h


def box_label(obj: SceneObject) -> str:
    """What a box of ``obj`` says: its label and, when it moved, how (``person ->``)."""
    mark = MOTION_MARKS.get(obj.motion, obj.motion)
    return f"{obj.label} {mark}".strip()


def label_colour(label: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def box_pixels(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A normalised box as pixel corners ``(x0, y0, x1, y1)`` inside a ``size`` (w, h) picture."""
    w, h = size
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    return (round(x0 * (w - 1)), round(y0 * (h - 1)), round(x1 * (w - 1)), round(y1 * (h - 1)))


def draw_objects(image: np.ndarray, objects: Sequence[SceneObject]) -> np.ndarray:
    """``image`` (RGB uint8, drawn on in place and returned) with each object's boxes and labels."""
    h, w = image.shape[:2]
    scale = max(0.35, min(w, h) / 640)
    thickness = max(1, round(min(w, h) / 240))
    for obj in objects:
        colour = label_colour(obj.label)
        text = box_label(obj)
        for box in obj.boxes:
            x0, y0, x1, y1 = box_pixels(box, (w, h))
            cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness)
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = y0 - 2 if y0 - th - base - 2 >= 0 else min(y0 + th + base + 2, h - 1)  # above, else inside
            cv2.rectangle(image, (x0, ty - th - base), (min(x0 + tw + 4, w - 1), ty + 1), colour, cv2.FILLED)
            cv2.putText(image, text, (x0 + 2, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return image


def render_snapshot(image: np.ndarray, objects: Sequence[SceneObject] = (), *, width: int | None = None,
                    aspect: float | None = None, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 H×W×3 ``image``, sized by :func:`snapshot_size`, with ``objects``'
    boxes drawn in (none: the picture alone). ``image`` is not modified."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.dtype} {image.shape}")
    out_w, out_h = snapshot_size(image.shape[:2], width=width, aspect=aspect)
    if (out_h, out_w) == image.shape[:2]:
        picture = image.copy() if objects else image
    else:
        interp = cv2.INTER_AREA if out_w < image.shape[1] else cv2.INTER_LINEAR
        picture = cv2.resize(image, (out_w, out_h), interpolation=interp)
    if objects:
        draw_objects(picture, objects)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the picture as JPEG")
    return data.tobytes()


__all__ = ["MAX_HEIGHT", "MAX_WIDTH", "MIN_WIDTH", "box_label", "box_pixels", "draw_objects", "render_snapshot",
           "snapshot_size"]
