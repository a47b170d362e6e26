"""Audio beside video, the pure parts: chunking, the audio timeline, the websocket PCM16 message,
resampling; and the loop side of a decoding source (scripted reader, no media) placing audio on
the frames' media clock, bounding it, and leaving it out unless ``audio=True``."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

from streamcap.core.errors import ProtocolError, SourceEnded
from streamcap.core.types import AUDIO_RATE, AudioChunk, Frame
from streamcap.sources.audio import (
    CHUNK_SAMPLES,
    AudioTimeline,
    Chunker,
    StreamResampler,
    encode_pcm16_message,
    is_audio_message,
    parse_pcm16_message,
    pcm16_to_float,
)
from streamcap.sources.reader import Decoded, DecodedAudio, Event, Kind, ReaderSource
from streamcap.sources.url import SourceKind, SourceSpec

# --------------------------------------------------------------------------- Chunker


def test_chunker_cuts_contiguous_audio_into_fixed_chunks_with_their_start_times():
    chunker = Chunker(chunk_samples=100, rate=1000)
    out = chunker.add(2.0, np.arange(250, dtype=np.float32))
    assert [(t, len(s)) for t, s in out] == [(2.0, 100), (2.1, 100)]
    out = chunker.add(2.25, np.arange(30, dtype=np.float32))  # contiguous: joins the 50 held
    assert out == []
    rest = chunker.flush()
    assert [(t, len(s)) for t, s in rest] == [(2.2, 80)]
    np.testing.assert_array_equal(rest[0][1][:50], np.arange(200, 250))
    assert chunker.flush() == []


def test_a_gap_in_container_time_ends_the_held_chunk_early():
    chunker = Chunker(chunk_samples=100, rate=1000)
    assert chunker.add(0.0, np.zeros(40, np.float32)) == []
    out = chunker.add(1.0, np.ones(120, np.float32))  # 0.96 s later than contiguous
    assert [(t, len(s)) for t, s in out] == [(0.0, 40), (1.0, 100)]
    assert [(t, len(s)) for t, s in chunker.flush()] == [(1.1, 20)]


def test_chunker_without_times_keeps_none():
    chunker = Chunker(chunk_samples=10, rate=1000)
    assert [(t, len(s)) for t, s in chunker.add(None, np.zeros(25, np.float32))] == [(None, 10), (None, 10)]


# --------------------------------------------------------------------------- AudioTimeline


def test_timeline_cuts_audio_before_zero_and_overlaps_and_snaps_tiny_gaps():
    line = AudioTimeline(rate=1000)
    start, samples = line.place(-0.05, np.arange(100, dtype=np.float32))
    assert start == 0.0 and len(samples) == 50 and samples[0] == 50
    start, samples = line.place(0.0501, np.zeros(10, np.float32))  # within SNAP_S: continuous
    assert start == pytest.approx(0.05) and len(samples) == 10
    start, samples = line.place(0.04, np.zeros(50, np.float32))  # overlaps 20 ms: cut
    assert start == pytest.approx(0.06) and len(samples) == 30
    assert line.place(0.0, np.zeros(50, np.float32)) is None  # wholly before the end
    start, _ = line.place(1.0, np.zeros(10, np.float32))  # a real gap is kept
    assert start == 1.0 and line.end_s == pytest.approx(1.01)
    assert line.place(float("nan"), np.zeros(10, np.float32)) is None


# --------------------------------------------------------------------------- PCM16 messages


def test_pcm16_message_round_trip_and_conversion():
    pcm = np.array([[0, 32767], [-32768, 16384]], dtype=np.int16)
    data = encode_pcm16_message(pcm, 48_000, 2)
    assert is_audio_message(data) and data[:4] == b"SCA1" and len(data) == 12 + 8
    msg = parse_pcm16_message(data)
    assert (msg.rate, msg.channels, msg.frames) == (48_000, 2, 2)
    np.testing.assert_allclose(pcm16_to_float(msg), [[0.0, 32767 / 32768], [-1.0, 0.5]])


@pytest.mark.parametrize(("data", "code", "words"), [
    (b"SCA1", "bad_message", "header"),
    (struct.pack("<4sIHH", b"SCA2", 16000, 1, 0) + b"\0\0", "bad_message", "header"),
    (struct.pack("<4sIHH", b"SCA1", 16000, 1, 7) + b"\0\0", "bad_message", "reserved"),
    (struct.pack("<4sIHH", b"SCA1", 7999, 1, 0) + b"\0\0", "bad_message", "sample rate 7999"),
    (struct.pack("<4sIHH", b"SCA1", 10**9, 1, 0) + b"\0\0", "bad_message", "sample rate"),
    (struct.pack("<4sIHH", b"SCA1", 16000, 0, 0) + b"\0\0", "bad_message", "0 channels"),
    (struct.pack("<4sIHH", b"SCA1", 16000, 9, 0) + b"\0" * 18, "bad_message", "9 channels"),
    (struct.pack("<4sIHH", b"SCA1", 16000, 1, 0), "bad_message", "no samples"),
    (struct.pack("<4sIHH", b"SCA1", 16000, 1, 0) + b"\0\0\0", "bad_message", "not whole"),
    (struct.pack("<4sIHH", b"SCA1", 16000, 2, 0) + b"\0" * 6, "bad_message", "not whole"),
    (struct.pack("<4sIHH", b"SCA1", 8000, 1, 0) + b"\0" * (2 * 8000 * 5 + 2), "too_large", "5 s"),
])
def test_bad_pcm16_messages_are_refused_with_a_clear_reason(data, code, words):
    with pytest.raises(ProtocolError) as refused:
        parse_pcm16_message(data)
    assert refused.value.code == code and words in refused.value.detail


def test_pcm16_message_over_the_byte_limit_is_too_large():
    with pytest.raises(ProtocolError) as refused:
        parse_pcm16_message(encode_pcm16_message(np.zeros(1000, np.int16), 16000), max_bytes=1000)
    assert refused.value.code == "too_large"


def test_stream_resampler_turns_stereo_48k_into_16k_mono_continuously():
    resampler = StreamResampler()
    t = np.arange(48_000) / 48_000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1)
    out = np.concatenate([resampler.resample(stereo[i:i + 960], 48_000) for i in range(0, 48_000, 960)])
    assert out.dtype == np.float32 and abs(len(out) - 16_000) < 64
    spectrum = np.abs(np.fft.rfft(out[1000:1000 + 8000]))
    assert np.argmax(spectrum) * AUDIO_RATE / 8000 == pytest.approx(440, abs=4)
    assert resampler.resample(np.zeros(100, np.float32), AUDIO_RATE).shape == (100,)  # 16 kHz: as is


# --------------------------------------------------------------------------- the loop side


class _Scripted(ReaderSource):
    """A reader thread that posts a script: OPENED, then ``items`` (callables of gen), then END."""

    kinds = frozenset({SourceKind.FILE, SourceKind.RTSP})

    def __init__(self, *args, script, has_video=True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.script = script
        self.has_video = has_video
        self.posted: asyncio.Event | None = None

    def _read_loop(self, gen, loop) -> None:
        self._post(loop, Event(gen, Kind.OPENED, fps=10.0, has_video=self.has_video))
        for make in self.script:
            item = make(gen)
            audio = isinstance(item, DecodedAudio)
            if isinstance(item, (Decoded, DecodedAudio)) and not self._wait_for_room(gen, audio=audio):
                return
            self._post(loop, item)
        assert self.posted is not None
        loop.call_soon_threadsafe(self.posted.set)  # after every post: FIFO
        self._post(loop, Event(gen, Kind.END, "end"))


def _frame(pts):
    return lambda gen: Decoded(gen, np.zeros((4, 4, 3), np.uint8), 0, pts)


def _audio(pts, n=CHUNK_SAMPLES, value=0.25):
    return lambda gen: DecodedAudio(gen, np.full(n, value, np.float32), 0, pts)


async def _run(source: _Scripted) -> list:
    source.posted = asyncio.Event()
    source._ensure_started()
    await asyncio.wait_for(source.posted.wait(), 5)
    items = []
    with pytest.raises(SourceEnded):
        while True:
            items.append(await asyncio.wait_for(source.recv(), 5))
    await source.aclose()
    return items


async def test_audio_is_placed_through_the_frames_media_clock_offset():
    # container time starts at 100 s: the first frame is media 0, a sound at container 100.5 s is
    # media 0.5 s, as is the frame at 100.5 s
    script = [_frame(100.0), _audio(99.98), _audio(100.03), _frame(100.1), _frame(100.2),
              _frame(100.3), _frame(100.4), _frame(100.5), _audio(100.5)]
    items = await _run(_Scripted("s", SourceSpec(SourceKind.FILE, "x"), script=script, audio=True,
                                 handoff_size=8))
    frames = [i for i in items if isinstance(i, Frame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [round(f.pts_s, 6) for f in frames] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    # the first chunk loses the 20 ms before media 0; the second overlaps it by 30 ms and is cut
    assert chunks[0].pts_s == 0.0 and len(chunks[0].samples) == CHUNK_SAMPLES - 320
    assert chunks[1].pts_s == pytest.approx(chunks[0].end_s)
    assert chunks[2].pts_s == pytest.approx(0.5)
    assert [c.seq for c in chunks] == [0, 1, 2]
    assert all(c.samples.dtype == np.float32 for c in chunks)


async def test_without_audio_true_decoded_audio_never_reaches_recv():
    script = [_frame(0.0), _audio(0.0), _frame(0.1)]
    items = await _run(_Scripted("s", SourceSpec(SourceKind.FILE, "x"), script=script))
    assert all(isinstance(i, Frame) for i in items) and len(items) == 2


async def test_a_live_audio_backlog_drops_the_oldest_chunks_as_audio_full():
    drops: list[str] = []
    script = [_frame(0.0), *[_audio(0.05 * k) for k in range(12)], _frame(0.1)]
    source = _Scripted("s", SourceSpec(SourceKind.RTSP, "rtsp://cam/x"), script=script, audio=True,
                       audio_handoff_size=5, end_on_eof=True, on_drop=drops.append)
    items = await _run(source)
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [c.seq for c in chunks] == list(range(7, 12))  # the newest five
    assert drops == ["audio_full"] * 7
    assert sum(isinstance(i, Frame) for i in items) == 2  # frames are not displaced by audio


async def test_an_audio_only_stream_drives_the_media_clock_and_goes_live():
    statuses = []
    script = [_audio(7.0 + 0.05 * k) for k in range(4)]
    source = _Scripted("s", SourceSpec(SourceKind.FILE, "x"), script=script, has_video=False, audio=True,
                       on_status=statuses.append)
    chunks = await _run(source)
    assert [round(c.pts_s, 6) for c in chunks] == [0.0, 0.05, 0.1, 0.15]
    assert [s.state.value for s in statuses] == ["starting", "live", "ended"]


# --------------------------------------------------------------------------- push sources


class _Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


def _push(**kwargs):
    from streamcap.sources.push import PushSource

    clock = _Clock()
    drops: list[str] = []
    return PushSource("p", clock=clock, on_drop=drops.append, **kwargs), clock, drops


def _drain(source) -> list:
    items = []
    while source._queue:
        items.append(_pop(source))
    return items


def _pop(source):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(source.recv())
    finally:
        loop.close()


def test_pushed_audio_continues_across_jitter_and_restarts_after_a_pause():
    source, clock, _ = _push(audio=True)
    twenty_ms = np.full(320, 0.1, np.float32)
    source.push(np.zeros((4, 4, 3), np.uint8))  # the first frame starts the clock: media 0
    for jitter in (0.02, 0.035, 0.005, 0.02):  # 20 ms pieces arriving unevenly
        clock.advance(jitter)
        source.push_audio(twenty_ms)
    clock.advance(2.0)  # the publisher paused
    source.push_audio(twenty_ms)
    items = _drain(source)
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    starts = [round(c.pts_s, 4) for c in chunks]
    assert starts[:4] == [0.0, 0.02, 0.04, 0.06]  # continuous: jitter leaves no gaps
    assert starts[4] == pytest.approx(2.08 - 0.02)  # after the pause: arrival (2.08 s) less its 20 ms
    assert isinstance(items[0], Frame) and items[0].pts_s == 0.0


def test_pushed_audio_is_cut_into_chunks_bounded_and_dropped_oldest_first():
    source, clock, drops = _push(audio=True, max_queued_audio=4)
    source.push_audio(np.zeros(CHUNK_SAMPLES * 3 + 10, np.float32))  # 4 chunks
    source.push_audio(np.zeros(CHUNK_SAMPLES * 2, np.float32))  # 2 more: the 2 oldest dropped
    chunks = _drain(source)
    assert [len(c.samples) for c in chunks] == [CHUNK_SAMPLES, 10, CHUNK_SAMPLES, CHUNK_SAMPLES]
    assert [c.seq for c in chunks] == [2, 3, 4, 5]
    assert drops == ["audio_full", "audio_full"]
    for a, b in zip(chunks, chunks[1:]):
        assert b.pts_s == pytest.approx(a.end_s)


def test_a_push_source_without_audio_true_discards_pushed_audio():
    source, _, _ = _push()
    assert not source.wants_audio
    assert source.push_audio(np.zeros(320, np.float32)) is True
    assert not source._queue and source.state.value == "starting"


def test_audio_anchor_follows_the_publishers_clock_and_reanchors_when_it_strays():
    from streamcap.sources.push import AudioAnchor

    anchor = AudioAnchor()
    assert anchor.media_s(1000.0, 0.5) == 0.5  # anchored at arrival
    assert anchor.media_s(1000.02, 0.53) == pytest.approx(0.52)  # the clock, not the jittery arrival
    assert anchor.media_s(1000.04, 0.55) == pytest.approx(0.54)
    assert anchor.media_s(5000.0, 0.57) == 0.57  # the clock jumped: re-anchored
    assert anchor.media_s(None, 0.6) == 0.6
