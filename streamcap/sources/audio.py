"""Audio beside video: decoded sound turned into :class:`~streamcap.core.types.AudioChunk`-sized
pieces of 16 kHz mono float32 on the stream's media clock. Pure, except :class:`Resampler` (PyAV).

* :class:`Resampler` turns any decoded ``av.AudioFrame`` (any rate, layout, sample format) into
  16 kHz mono float32 with its container time (``av.AudioResampler(format="flt", layout="mono",
  rate=16000)``; PyAV keeps the pts through the resampler, in 1/16000 s).
* :class:`Chunker` cuts a stream of ``(container time, samples)`` pieces into chunks of
  :data:`CHUNK_SAMPLES` (50 ms); a gap or overlap in the container's time ends the current chunk
  early, so a chunk's samples are always contiguous in time.
* :class:`AudioTimeline` places chunks on media time: given the chunk's media start (computed by
  the source from its video clock) it keeps audio strictly in order — the part of a chunk that
  would start before 0 or overlap the previous chunk is cut off, a start within
  :data:`SNAP_S` of the previous end is snapped to it (no spurious 1-sample gaps).
* :func:`parse_pcm16_message` / :func:`encode_pcm16_message` are the websocket ingest's binary
  audio message (docs/ingest.md, "Audio"); :func:`pcm16_to_mono16k` converts its body.

Threading: the classes hold state and are used by one thread each (a reader thread, or the event
loop); nothing here blocks.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamcap.core.errors import ErrorCode, ProtocolError
from streamcap.core.types import AUDIO_RATE

#: samples per chunk a decoding source delivers (50 ms at 16 kHz)
CHUNK_SAMPLES = AUDIO_RATE // 20
#: two pieces of audio whose times differ by less than this are contiguous (rounding, resampler)
SNAP_S = 2e-3

# --------------------------------------------------------------------------- resampling


class Resampler:
    """Decoded audio frames (PyAV) → 16 kHz mono float32 with their container time (seconds, or
    None when the frame has no pts). One per decoded audio stream and connection."""

    def __init__(self) -> None:
        import av

        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)

    def resample(self, frame: Any | None) -> list[tuple[float | None, np.ndarray]]:
        """The 16 kHz mono pieces of ``frame`` (None: flush what the resampler still holds)."""
        out = []
        for piece in self._resampler.resample(frame):
            samples = piece.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            if not len(samples):
                continue
            t = (float(piece.pts * piece.time_base) if piece.pts is not None and piece.time_base
                 else None)
            out.append((t, np.clip(samples, -1.0, 1.0)))
        return out


# --------------------------------------------------------------------------- chunking


class Chunker:
    """Cut contiguous audio into chunks of ``chunk_samples``; see the module docstring.

    :meth:`add` returns the chunks completed, each ``(container time of its first sample or None,
    samples)``; :meth:`flush` returns the remainder (at the end of a connection)."""

    def __init__(self, chunk_samples: int = CHUNK_SAMPLES, rate: int = AUDIO_RATE) -> None:
        if chunk_samples < 1:
            raise ValueError("chunk_samples must be >= 1")
        self.chunk_samples = chunk_samples
        self.rate = rate
        self._pieces: list[np.ndarray] = []
        self._count = 0
        self._start: float | None = None  # container time of the first held sample
        self._timed = False  # whether _start is known

    def add(self, t: float | None, samples: np.ndarray) -> list[tuple[float | None, np.ndarray]]:
        out: list[tuple[float | None, np.ndarray]] = []
        if self._count and t is not None and self._timed:
            expected = self._start + self._count / self.rate  # type: ignore[operator]
            if abs(t - expected) > SNAP_S:  # a gap or an overlap: what is held ends here
                out.extend(self.flush())
        if not self._count:
            self._start, self._timed = t, t is not None
        self._pieces.append(samples)
        self._count += len(samples)
        while self._count >= self.chunk_samples:
            held = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
            chunk, rest = held[:self.chunk_samples], held[self.chunk_samples:]
            out.append((self._start, np.ascontiguousarray(chunk, dtype=np.float32)))
            if self._start is not None:
                self._start += self.chunk_samples / self.rate
            self._pieces, self._count = ([rest] if len(rest) else []), len(rest)
        return out

    def flush(self) -> list[tuple[float | None, np.ndarray]]:
        if not self._count:
            return []
        held = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
        start = self._start
        self._pieces, self._count, self._start, self._timed = [], 0, None, False
        return [(start, np.ascontiguousarray(held, dtype=np.float32))]


# --------------------------------------------------------------------------- media time


class AudioTimeline:
    """Keeps a stream's audio chunks in order on media time (see the module docstring)."""

    def __init__(self, rate: int = AUDIO_RATE) -> None:
        self.rate = rate
        self.end_s: float | None = None  # media time just after the last chunk placed

    def place(self, start_s: float, samples: np.ndarray) -> tuple[float, np.ndarray] | None:
        """``(media start, samples)`` to deliver, trimmed; None when nothing of it is left."""
        if not math.isfinite(start_s):
            return None
        floor = 0.0 if self.end_s is None else self.end_s
        if abs(start_s - floor) <= SNAP_S and self.end_s is not None:
            start_s = floor
        elif start_s < floor:
            cut = int(math.ceil((floor - start_s) * self.rate - 1e-6))
            if cut >= len(samples):
                return None
            samples = samples[cut:]
            start_s = floor
        if not len(samples):
            return None
        self.end_s = start_s + len(samples) / self.rate
        return start_s, samples


# --------------------------------------------------------------------------- websocket PCM16

#: the binary audio message: magic, sample rate (u32 LE), channels (u16 LE), reserved (u16, 0)
PCM16_MAGIC = b"SCA1"
PCM16_HEADER = struct.Struct("<4sIHH")
#: sample rates and channel counts an ingest client may send
MIN_INGEST_RATE, MAX_INGEST_RATE = 8_000, 192_000
MAX_INGEST_CHANNELS = 8
#: at most this much audio in one message
MAX_INGEST_AUDIO_S = 5.0


@dataclass(frozen=True, slots=True)
class Pcm16Message:
    rate: int
    channels: int
    pcm: bytes  # interleaved signed 16-bit little-endian samples

    @property
    def frames(self) -> int:
        return len(self.pcm) // (2 * self.channels)

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate


def is_audio_message(data: bytes) -> bool:
    """Whether a binary ingest message claims to be audio (starts with :data:`PCM16_MAGIC`)."""
    return data[:4] == PCM16_MAGIC


def encode_pcm16_message(pcm: bytes | np.ndarray, rate: int, channels: int = 1) -> bytes:
    """A binary audio message for ``/ingest`` (clients, tests). ``pcm``: int16 samples (frames ×
    channels, interleaved) or their little-endian bytes."""
    if isinstance(pcm, np.ndarray):
        pcm = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    return PCM16_HEADER.pack(PCM16_MAGIC, rate, channels, 0) + pcm


def parse_pcm16_message(data: bytes, *, max_bytes: int | None = None) -> Pcm16Message:
    """The audio message in ``data``. Raises ProtocolError: ``bad_message`` for a bad header,
    rate, channel count or body length, ``too_large`` over ``max_bytes`` or
    :data:`MAX_INGEST_AUDIO_S` seconds."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"audio message is {len(data)} bytes; the limit is {max_bytes}",
                            code=ErrorCode.TOO_LARGE)
    if len(data) < PCM16_HEADER.size or not is_audio_message(data):
        raise ProtocolError(f"audio message needs a {PCM16_HEADER.size}-byte header "
                            "(b'SCA1', rate u32 LE, channels u16 LE, 0 u16)", code=ErrorCode.BAD_MESSAGE)
    _, rate, channels, reserved = PCM16_HEADER.unpack_from(data)
    if reserved != 0:
        raise ProtocolError("audio message: the reserved header field must be 0", code=ErrorCode.BAD_MESSAGE)
    if not MIN_INGEST_RATE <= rate <= MAX_INGEST_RATE:
        raise ProtocolError(f"audio message: sample rate {rate} is outside {MIN_INGEST_RATE}..{MAX_INGEST_RATE} Hz",
                            code=ErrorCode.BAD_MESSAGE)
    if not 1 <= channels <= MAX_INGEST_CHANNELS:
        raise ProtocolError(f"audio message: {channels} channels; 1 to {MAX_INGEST_CHANNELS} are allowed",
                            code=ErrorCode.BAD_MESSAGE)
    pcm = data[PCM16_HEADER.size:]
    if not pcm:
        raise ProtocolError("audio message has no samples", code=ErrorCode.BAD_MESSAGE)
    if len(pcm) % (2 * channels):
        raise ProtocolError(f"audio message body is {len(pcm)} bytes: not whole 16-bit samples of "
                            f"{channels} channel(s) ({2 * channels} bytes each)", code=ErrorCode.BAD_MESSAGE)
    message = Pcm16Message(rate, channels, bytes(pcm))
    if message.duration_s > MAX_INGEST_AUDIO_S:
        raise ProtocolError(f"audio message holds {message.duration_s:.2f} s; the limit is "
                            f"{MAX_INGEST_AUDIO_S:g} s per message", code=ErrorCode.TOO_LARGE)
    return message


def pcm16_to_float(message: Pcm16Message) -> np.ndarray:
    """The message's samples as float32 in [-1, 1], shape (frames, channels)."""
    pcm = np.frombuffer(message.pcm, dtype="<i2").reshape(-1, message.channels)
    return pcm.astype(np.float32) / 32768.0


class StreamResampler:
    """Mono float32 at any rate → :data:`AUDIO_RATE`, continuous across calls (PyAV's resampler
    keeps its filter state, so consecutive pieces join without clicks). Rebuilt when the input
    rate or channel count changes. For pushed audio (websocket ingest, WHIP)."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._resampler: Any = None

    def resample(self, samples: np.ndarray, rate: int) -> np.ndarray:
        """``samples`` (frames × channels float32, or 1-D mono) at ``rate`` → 16 kHz mono float32
        (the resampler may hold back a few samples until the next call)."""
        import av

        if samples.ndim == 1:
            samples = samples[:, None]
        channels = samples.shape[1]
        mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if rate == AUDIO_RATE:
            return np.clip(mono, -1.0, 1.0)
        if self._key != (rate, 1) or self._resampler is None:
            self._key = (rate, 1)
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        out = [piece.to_ndarray().reshape(-1) for piece in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, np.float32)
        return np.clip(np.concatenate(out).astype(np.float32, copy=False), -1.0, 1.0)


__all__ = [
    "CHUNK_SAMPLES", "MAX_INGEST_AUDIO_S", "MAX_INGEST_CHANNELS", "MAX_INGEST_RATE", "MIN_INGEST_RATE",
    "PCM16_HEADER", "PCM16_MAGIC", "SNAP_S", "AudioTimeline", "Chunker", "Pcm16Message", "Resampler",
    "StreamResampler", "encode_pcm16_message", "is_audio_message", "parse_pcm16_message", "pcm16_to_float",
]
