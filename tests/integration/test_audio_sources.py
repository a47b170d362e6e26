"""Audio beside video, on real media and real peers: files (H.264 + AAC/Opus, audio only) and
RTSP through the GStreamer server give AudioChunks on the frames' media clock — a beep and the
white flash written at the same time arrive at the same ``pts_s`` within one frame interval;
websocket ingest takes PCM16 from a real websocket client and refuses malformed audio without
harming the stream; a real aiortc publisher's audio track arrives over WHIP."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamcap.core.errors import SourceEnded, SourceError
from streamcap.core.types import AUDIO_RATE, AudioChunk, Frame, StreamState
from streamcap.sources import open_source
from streamcap.sources.pyav import probe_media, probe_video
from tests.helpers import StatusLog
from tools.media import BeepClip, render_beep_clip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


# --------------------------------------------------------------------------- helpers


def beep_onsets(chunks: list[AudioChunk], threshold: float = 0.1) -> list[float]:
    """Media times where the sound rises above ``threshold`` after at least 0.2 s of quiet."""
    onsets: list[float] = []
    last = -1.0
    for chunk in chunks:
        loud = np.flatnonzero(np.abs(chunk.samples) > threshold)
        for i in loud:
            t = chunk.pts_s + i / AUDIO_RATE
            if not onsets or t - last > 0.2:
                onsets.append(t)
            last = t
    return onsets


def flash_times(frames: list[Frame]) -> list[float]:
    return [f.pts_s for f in frames if f.image.mean() > 128]


def assert_audio_timeline(chunks: list[AudioChunk]) -> None:
    assert chunks, "no audio"
    assert [c.seq for c in chunks] == list(range(chunks[0].seq, chunks[0].seq + len(chunks)))
    for a, b in zip(chunks, chunks[1:]):
        assert b.pts_s >= a.end_s - 1e-9, (a.pts_s, a.end_s, b.pts_s)  # in order, never overlapping
    for c in chunks:
        assert c.samples.dtype == np.float32 and c.samples.ndim == 1
        assert 0 < len(c.samples) <= AUDIO_RATE // 10  # at most 100 ms
        assert np.all(np.abs(c.samples) <= 1.0)


def assert_aligned(clip: BeepClip, frames: list[Frame], chunks: list[AudioChunk], *, offset_s: float = 0.0) -> None:
    """Each beep is heard where its flash is seen (within one frame interval), at the clip's times
    (shifted by ``offset_s`` of media time)."""
    step = 1.0 / clip.fps
    onsets, flashes = beep_onsets(chunks), flash_times(frames)
    assert len(onsets) == len(clip.beeps_s) and len(flashes) == len(clip.beeps_s), (onsets, flashes)
    for written, heard, seen in zip(clip.beeps_s, onsets, flashes):
        assert abs(heard - seen) < step, (heard, seen)
        assert abs(heard - (written + offset_s)) < step, (heard, written)


async def read_all(source) -> tuple[list[Frame], list[AudioChunk]]:
    frames, chunks = [], []
    try:
        with pytest.raises(SourceEnded):
            while True:
                item = await asyncio.wait_for(source.recv(), 30)
                (chunks if isinstance(item, AudioChunk) else frames).append(item)
    finally:
        await source.aclose()
    return frames, chunks


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, BeepClip]:
    d = tmp_path_factory.mktemp("beeps")
    made = {
        "h264_aac_mp4": render_beep_clip(d / "av.mp4"),
        "h264_opus_mkv": render_beep_clip(d / "av.mkv", audio_codec="opus"),
        "aac_only_mp4": render_beep_clip(d / "aac.mp4", video=False),
        "opus_only_mkv": render_beep_clip(d / "opus.mkv", video=False, audio_codec="opus"),
    }
    # the same clip in MPEG-TS with its clock starting at 100 s: container times are not media times
    ts = d / "av_offset.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(made["h264_aac_mp4"].path), "-c", "copy",
                    "-output_ts_offset", "100", str(ts)], check=True, timeout=60)
    made["h264_aac_ts_at_100s"] = BeepClip(ts, *[getattr(made["h264_aac_mp4"], f) for f in (
        "fps", "duration_s", "beeps_s", "beep_s", "tone_hz", "has_video", "audio_codec")])
    return made


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["h264_aac_mp4", "h264_opus_mkv", "h264_aac_ts_at_100s"])
async def test_a_file_with_video_and_audio_gives_both_on_one_media_clock(clips, name):
    clip = clips[name]
    drops: list[str] = []
    statuses = StatusLog()
    frames, chunks = await read_all(open_source("av", str(clip.path), audio=True, on_drop=drops.append,
                                                on_status=statuses))
    assert len(frames) == round(clip.duration_s * clip.fps)  # a file loses nothing
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(len(frames)) / clip.fps, atol=1e-3)
    assert_audio_timeline(chunks)
    heard_s = sum(len(c.samples) for c in chunks) / AUDIO_RATE
    assert heard_s == pytest.approx(clip.duration_s, abs=0.05)
    assert chunks[0].pts_s == pytest.approx(0.0, abs=0.03)
    assert_aligned(clip, frames, chunks)
    assert drops == []
    assert statuses.states == [StreamState.STARTING, StreamState.LIVE, StreamState.ENDED]


async def test_frames_and_audio_come_interleaved_in_time_order(clips):
    source = open_source("av", str(clips["h264_aac_mp4"].path), audio=True)
    items = []
    try:
        while len(items) < 60:
            items.append(await asyncio.wait_for(source.recv(), 10))
    finally:
        await source.aclose()
    kinds = {type(i) for i in items}
    assert kinds == {Frame, AudioChunk}
    # once both have started, neither track runs ahead of the other by more than 0.5 s
    newest: dict[type, float] = {}
    for item in items:
        newest[type(item)] = item.pts_s
        if len(newest) == 2:
            assert abs(newest[Frame] - newest[AudioChunk]) < 0.5, newest


async def test_without_audio_true_a_file_with_sound_gives_frames_only(clips):
    frames, chunks = await read_all(open_source("av", str(clips["h264_aac_mp4"].path)))
    assert chunks == [] and all(isinstance(f, Frame) for f in frames) and len(frames) == 60


@pytest.mark.parametrize("name", ["aac_only_mp4", "opus_only_mkv"])
async def test_an_audio_only_file_is_read_for_its_sound_when_audio_is_wanted(clips, name):
    clip = clips[name]
    statuses = StatusLog()
    frames, chunks = await read_all(open_source("radio", str(clip.path), audio=True, on_status=statuses))
    assert frames == []
    assert_audio_timeline(chunks)
    assert chunks[0].pts_s == 0.0
    onsets = beep_onsets(chunks)
    assert len(onsets) == len(clip.beeps_s)
    for written, heard in zip(clip.beeps_s, onsets):
        assert abs(heard - written) < 1.0 / clip.fps
    assert statuses.states == [StreamState.STARTING, StreamState.LIVE, StreamState.ENDED]


async def test_an_audio_only_file_without_audio_true_keeps_todays_error(clips):
    source = open_source("radio", str(clips["aac_only_mp4"].path))
    with pytest.raises(SourceError, match=r"no video stream \(audio only\)"):
        await source.recv()
    await source.aclose()


def _subtitles_only(path: Path) -> Path:
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(srt), str(path)], check=True, timeout=60)
    return path


async def test_probe_media_accepts_audio_only_files_when_audio_is_wanted_and_refuses_files_with_neither(
        clips, tmp_path):
    audio_only = str(clips["aac_only_mp4"].path)
    assert probe_media(audio_only, want_audio=True) is None
    assert "no video stream (audio only)" in probe_media(audio_only, want_audio=False)
    assert "no video stream (audio only)" in probe_video(audio_only)
    assert probe_media(str(clips["h264_aac_mp4"].path), want_audio=True) is None
    neither = str(_subtitles_only(tmp_path / "subs.mkv"))
    assert "no video or audio stream" in probe_media(neither, want_audio=True)
    statuses = StatusLog()
    source = open_source("subs", neither, audio=True, on_status=statuses)
    with pytest.raises(SourceError, match="no video or audio stream"):
        await source.recv()
    await source.aclose()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    assert "not a media file" in probe_media(str(text), want_audio=True)


# --------------------------------------------------------------------------- RTSP

RTSP_BEEPS_S = tuple(1.0 + 1.5 * k for k in range(50))


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> dict[str, BeepClip]:
    """80 s clips (a served file does not loop), beeping every 1.5 s."""
    d = tmp_path_factory.mktemp("long_beeps")
    return {"av": render_beep_clip(d / "av.mp4", duration_s=80, beeps_s=RTSP_BEEPS_S),
            "audio": render_beep_clip(d / "audio.mp4", duration_s=80, beeps_s=RTSP_BEEPS_S, video=False)}


@pytest.fixture
def audio_rtsp_server(rtsp_server, require_system):
    from tests.helpers.rtsp import rtsp_audio_available

    reason = rtsp_audio_available()
    if reason is not None:
        require_system(reason)
    return rtsp_server


async def collect_until(source, *, frames: int = 0, chunks: int = 0, timeout_s: float = 30.0):
    got_frames, got_chunks = [], []
    async with asyncio.timeout(timeout_s):
        while len(got_frames) < frames or len(got_chunks) < chunks:
            item = await source.recv()
            (got_chunks if isinstance(item, AudioChunk) else got_frames).append(item)
    return got_frames, got_chunks


async def test_rtsp_with_h264_and_aac_gives_frames_and_audio_on_one_media_clock(audio_rtsp_server, long_clips):
    clip = long_clips["av"]
    server = audio_rtsp_server({"av": clip.path})
    drops: list[str] = []
    statuses = StatusLog()
    source = open_source("cam", server.url("av"), audio=True, on_drop=drops.append, on_status=statuses)
    try:
        # about 5 s: three or four beeps; a consumer that keeps up loses nothing
        frames, chunks = await collect_until(source, frames=50, chunks=100)
    finally:
        await source.aclose()
    assert statuses.states[:2] == [StreamState.STARTING, StreamState.LIVE]
    assert_audio_timeline(chunks)
    assert np.all(np.diff([f.pts_s for f in frames]) > 0)
    onsets, flashes = beep_onsets(chunks), flash_times(frames)
    assert len(onsets) >= 2 and len(flashes) >= 2, (onsets, flashes)
    pairs = [(heard, min(flashes, key=lambda seen: abs(seen - heard))) for heard in onsets]
    for heard, seen in pairs:  # the server started both tracks at once: a beep lands on its flash
        assert abs(heard - seen) < 1.0 / clip.fps, pairs
    # and beeps keep their 1.5 s spacing on media time
    np.testing.assert_allclose(np.diff(onsets), 1.5, atol=0.05)
    assert "audio_full" not in drops and "handoff_full" not in drops


async def test_rtsp_with_sound_only_gives_audio_chunks(audio_rtsp_server, long_clips):
    server = audio_rtsp_server({"radio": long_clips["audio"].path})
    statuses = StatusLog()
    source = open_source("radio", server.url("radio"), audio=True, on_status=statuses)
    try:
        frames, chunks = await collect_until(source, chunks=60)  # 3 s
    finally:
        await source.aclose()
    assert frames == []
    assert_audio_timeline(chunks)
    assert chunks[0].pts_s == 0.0
    onsets = beep_onsets(chunks)
    assert onsets, "no beep heard"
    np.testing.assert_allclose(np.diff(onsets), 1.5, atol=0.05)
    # live: 3 s of sound arrive over about 3 s of real time
    span_s = (chunks[-1].capture_ns - chunks[0].capture_ns) / 1e9
    assert span_s == pytest.approx(chunks[-1].pts_s - chunks[0].pts_s, abs=1.0)
    assert statuses.states[:2] == [StreamState.STARTING, StreamState.LIVE]


async def test_rtsp_without_audio_true_still_reads_only_the_picture(audio_rtsp_server, long_clips):
    server = audio_rtsp_server({"av": long_clips["av"].path})
    source = open_source("cam", server.url("av"))
    try:
        items = [await asyncio.wait_for(source.recv(), 20) for _ in range(20)]
    finally:
        await source.aclose()
    assert all(isinstance(i, Frame) for i in items)
