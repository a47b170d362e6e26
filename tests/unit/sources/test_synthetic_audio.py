"""The ``synthetic:shapes`` source's narration: AudioChunks of a looped WAV in step with the frames
on one media clock (unpaced here; the paced source is in tests/integration/test_synthetic_narration_paced.py)."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.core.errors import SourceEnded
from streamcap.core.types import AUDIO_RATE, AudioChunk, Frame
from streamcap.sources.synthetic import NarrationLoop, SyntheticShapesSource, load_narration
from tools.speech_media import write_wav

CHUNK = 800  # 50 ms, as the decoding sources


@pytest.fixture
def narration_wav(tmp_path):
    t = np.arange(round(0.55 * AUDIO_RATE)) / AUDIO_RATE  # 0.55 s: not a whole number of chunks
    samples = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return write_wav(tmp_path / "narration.wav", samples), samples


async def _drain(source):
    items = []
    with pytest.raises(SourceEnded):
        while True:
            items.append(await source.recv())
    await source.aclose()
    return items


async def test_narration_chunks_interleave_with_frames_on_one_clock(narration_wav):
    path, samples = narration_wav
    source = SyntheticShapesSource("demo", fps=10, size=(64, 48), realtime=False, duration_s=3.0,
                                   audio=True, narration=path, narration_gap_s=0.25)
    items = await _drain(source)
    frames = [i for i in items if isinstance(i, Frame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [f.seq for f in frames] == list(range(30))
    assert [c.seq for c in chunks] == list(range(60))  # 3.0 s of 50 ms chunks
    assert [c.pts_s for c in chunks] == pytest.approx([k * 0.05 for k in range(60)])
    assert all(len(c.samples) == CHUNK and c.samples.dtype == np.float32 for c in chunks)
    assert all(c.stream == "demo" for c in chunks)
    # in step: each chunk comes after the frames before its end and before the frame at its end
    for pos, item in enumerate(items):
        if isinstance(item, AudioChunk):
            before = [i.pts_s for i in items[:pos] if isinstance(i, Frame)]
            after = [i.pts_s for i in items[pos:] if isinstance(i, Frame)]
            assert before and max(before) < item.end_s - 1e-9
            assert not after or min(after) >= item.end_s - 1e-9
    # the signal is the WAV, then 0.25 s of silence, then the WAV again
    heard = np.concatenate([c.samples for c in chunks])
    period = len(samples) + round(0.25 * AUDIO_RATE)
    assert np.allclose(heard[:len(samples)], samples, atol=1 / 16384)
    assert not heard[len(samples):period].any()
    assert np.allclose(heard[period:period + len(samples)], samples, atol=1 / 16384)


async def test_frames_are_the_same_with_or_without_narration(narration_wav):
    path, _ = narration_wav
    plain = await _drain(SyntheticShapesSource("a", seed=5, fps=10, size=(64, 48), realtime=False,
                                               duration_s=1.0))
    spoken = await _drain(SyntheticShapesSource("a", seed=5, fps=10, size=(64, 48), realtime=False,
                                                duration_s=1.0, audio=True, narration=path))
    frames = [i for i in spoken if isinstance(i, Frame)]
    assert [f.pts_s for f in frames] == [f.pts_s for f in plain]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, plain))


async def test_without_audio_the_narration_is_not_even_read(tmp_path):
    source = SyntheticShapesSource("a", fps=10, size=(64, 48), realtime=False, duration_s=0.5,
                                   narration=tmp_path / "missing.wav")
    items = await _drain(source)
    assert all(isinstance(i, Frame) for i in items) and len(items) == 5
    assert "narration" not in source.describe()


async def test_audio_without_narration_gives_frames_only():
    items = await _drain(SyntheticShapesSource("a", fps=10, size=(64, 48), realtime=False,
                                               duration_s=0.5, audio=True))
    assert all(isinstance(i, Frame) for i in items) and len(items) == 5


def test_narration_must_be_16k_mono_pcm(tmp_path):
    write_wav(tmp_path / "44k.wav", np.zeros(441, np.float32), rate=44_100)
    with pytest.raises(ValueError, match="16000 Hz mono 16-bit"):
        load_narration(tmp_path / "44k.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        SyntheticShapesSource("a", audio=True, narration=tmp_path / "junk.wav")
    with pytest.raises(OSError):
        load_narration(tmp_path / "missing.wav")


def test_narration_loop_wraps_across_chunk_edges():
    loop = NarrationLoop(np.arange(1, 6, dtype=np.float32), gap_s=2 / AUDIO_RATE, chunk_samples=3)
    # the endless signal: 1 2 3 4 5 0 0 | 1 2 3 4 5 0 0 | ...
    assert loop.chunk(0).tolist() == [1, 2, 3]
    assert loop.chunk(1).tolist() == [4, 5, 0]
    assert loop.chunk(2).tolist() == [0, 1, 2]
    assert loop.chunk(7).tolist() == [1, 2, 3]  # 21 samples: three whole periods later
    assert loop.chunk(9).tolist() == [0, 1, 2]
    assert loop.chunk_end_s(1) == pytest.approx(6 / AUDIO_RATE)
    with pytest.raises(ValueError):
        NarrationLoop(np.zeros(0, np.float32), gap_s=1.0)
