"""Test publishers' media: storyline frames encoded as JPEG/PNG, as a simple ingest client sends."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from streamcap.demo.synthetic import Storyline

SIZE = (320, 240)


def encode(image_rgb: np.ndarray, ext: str = ".jpg", quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    return buf.tobytes()


def storyline_jpegs(story: Storyline, start_s: float, count: int, fps: float = 10.0) -> list[bytes]:
    w, h = SIZE
    first = round(start_s * fps)
    return [encode(story.render(i / fps, w, h, i)) for i in range(first, first + count)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def huge_png(width: int, height: int) -> bytes:
    """A valid grey PNG of ``width`` x ``height`` that stays small encoded (all black rows,
    compressed row by row: never held decoded here). 20000x20000 is about 0.4 MB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte, then one grey byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
