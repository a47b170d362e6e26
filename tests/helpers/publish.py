"""Test publishers' media: storyline frames encoded as JPEG/PNG, as a simple ingest client sends;
PCM16 tone messages for websocket audio ingest; a tone-playing aiortc audio track for WHIP."""

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


def tone(seconds: float, rate: int = 48_000, channels: int = 2, hz: float = 440.0, amplitude: float = 0.5,
         start_s: float = 0.0) -> np.ndarray:
    """A sine as int16 samples, shape (frames, channels), starting at phase ``start_s``."""
    t = start_s + np.arange(round(seconds * rate)) / rate
    mono = np.round(amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


def tone_messages(seconds: float, piece_s: float = 0.02, rate: int = 48_000, channels: int = 2,
                  hz: float = 440.0) -> list[bytes]:
    """``seconds`` of a continuous tone as binary /ingest audio messages of ``piece_s`` each."""
    from streamcap.sources.audio import encode_pcm16_message

    n = round(seconds / piece_s)
    return [encode_pcm16_message(tone(piece_s, rate, channels, hz, start_s=i * piece_s), rate, channels)
            for i in range(n)]


def tone_track(hz: float = 440.0, rate: int = 48_000, *, beep_every_s: float | None = None, beep_s: float = 0.2):
    """An aiortc audio track playing a continuous ``hz`` tone in 20 ms stereo frames, paced like
    a microphone by aiortc's own audio track (start time + pts). With ``beep_every_s`` the tone
    sounds only for ``beep_s`` at the start of each period (silence between)."""
    import fractions

    from aiortc.mediastreams import AudioStreamTrack
    from av import AudioFrame

    class ToneTrack(AudioStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self.sent = 0  # samples sent

        async def recv(self) -> AudioFrame:
            await super().recv()  # aiortc's silent 20 ms frame, delivered on its own clock: the pacing
            samples = rate // 50  # the same 20 ms
            pcm = tone(samples / rate, rate, 2, hz, start_s=self.sent / rate)
            if beep_every_s is not None:
                t = (self.sent + np.arange(samples)) / rate
                pcm[(t % beep_every_s) >= beep_s] = 0
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = rate
            frame.pts = self.sent
            frame.time_base = fractions.Fraction(1, rate)
            self.sent += samples
            return frame

    return ToneTrack()


def flash_track(every_s: float = 1.0, flash_s: float = 0.2, size: tuple[int, int] = (160, 120)):
    """An aiortc video track at 30 fps, dark grey but white for ``flash_s`` at the start of each
    ``every_s`` (its own clock, start time + pts, like :func:`tone_track`'s beeps)."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class FlashTrack(VideoStreamTrack):
        async def recv(self) -> VideoFrame:
            pts, time_base = await self.next_timestamp()
            t = float(pts * time_base)
            w, h = size
            frame = VideoFrame.from_ndarray(np.full((h, w, 3), 235 if t % every_s < flash_s else 30, np.uint8),
                                            format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    return FlashTrack()
