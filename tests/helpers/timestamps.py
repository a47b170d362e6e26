"""Small videos whose container timestamps lie, made with ffmpeg at test time (each < 100 KB,
well under a second to make): a forward jump of a billion seconds in a fragmented mp4, a one-day
jump in an MPEG-TS, and a rewind (8 s, then the encoder restarts at 4 s) in an MPEG-TS."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

FPS = 10
SIZE = "160x120"
_ENCODE = ["-c:v", "libx264", "-bf", "0", "-g", str(FPS), "-pix_fmt", "yuv420p"]


class MediaError(RuntimeError):
    """ffmpeg is missing or failed."""


def _ffmpeg(*args: str) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise MediaError("ffmpeg not found")
    proc = subprocess.run([exe, "-v", "error", "-y", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg failed: {proc.stderr[-500:]}")


def _testsrc(duration_s: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size={SIZE}:rate={FPS}:duration={duration_s}"]


def fmp4_with_jump(path: Path, *, duration_s: float = 6.0, jump_at_s: float = 3.0,
                   jump_s: float = 1e9) -> Path:
    """A fragmented mp4 (one fragment per second) whose fragments from ``jump_at_s`` on have
    their decode time (``tfdt``, 64-bit) moved ``jump_s`` seconds on: the frames are all there,
    the timestamps leap."""
    raw = path.with_suffix(".raw.mp4")
    _ffmpeg(*_testsrc(duration_s), *_ENCODE, "-movflags",
            "frag_keyframe+empty_moov+default_base_moof+skip_trailer", str(raw))
    data = bytearray(raw.read_bytes())
    raw.unlink()
    mdhd = data.index(b"mdhd")
    version = data[mdhd + 4]
    timescale = struct.unpack(">I", data[mdhd + 8 + (16 if version else 8):][:4])[0]
    at, shift = round(jump_at_s * timescale), round(jump_s * timescale)
    pos, patched = 0, 0
    while (pos := data.find(b"tfdt", pos + 1)) != -1:
        if data[pos + 4] != 1:
            raise MediaError("expected 64-bit tfdt boxes (ffmpeg's mp4 muxer writes version 1)")
        start = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        if start >= at:
            data[pos + 8:pos + 16] = struct.pack(">Q", start + shift)
            patched += 1
    if not patched:
        raise MediaError("no fragment to move")
    path.write_bytes(bytes(data))
    return path


def mpegts_segments(path: Path, segments: list[tuple[float, float]]) -> Path:
    """MPEG-TS segments ``(duration_s, ts_offset_s)`` one after another (TS concatenates as
    bytes): e.g. ``[(3, 0), (3, 86400)]`` jumps a day, ``[(8, 0), (4, 4)]`` rewinds to 4 s."""
    parts = []
    for i, (duration_s, offset_s) in enumerate(segments):
        part = path.with_suffix(f".{i}.ts")
        _ffmpeg(*_testsrc(duration_s), *_ENCODE, "-output_ts_offset", str(offset_s),
                "-f", "mpegts", str(part))
        parts.append(part)
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    for part in parts:
        part.unlink()
    return path
