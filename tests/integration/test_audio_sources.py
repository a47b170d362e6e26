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


async def _whip_answer(server, pc, stream: str) -> str:
    """POST ``pc``'s offer to ``/whip/{stream}`` with the publish token; the answer (201 asserted)."""
    import aiohttp

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
            server.url(f"/whip/{stream}"), data=pc.localDescription.sdp.encode(),
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {PUBLISH}"}) as r:
        assert r.status == 201, await r.text()
        return await r.text()


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


async def test_a_music_file_with_cover_art_is_read_as_sound_when_audio_is_wanted(tmp_path):
    song = tmp_path / "song.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=1000:duration=2",
                    "-f", "lavfi", "-i", "color=red:size=64x64:duration=1", "-map", "0", "-map", "1",
                    "-c:a", "libmp3lame", "-c:v", "mjpeg", "-frames:v", "1", "-disposition:v", "attached_pic",
                    str(song)], check=True, timeout=60)
    frames, chunks = await read_all(open_source("song", str(song), audio=True))
    assert frames == []  # the album cover is no picture of the stream
    assert_audio_timeline(chunks)
    assert sum(len(c.samples) for c in chunks) / AUDIO_RATE == pytest.approx(2.0, abs=0.1)
    assert probe_media(str(song), want_audio=True) is None


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


async def test_http_with_video_and_audio_gives_both_on_one_media_clock(clips):
    from aiohttp import web

    clip = clips["h264_aac_ts_at_100s"]
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(clip.path)

    app = web.Application()
    app.router.add_get("/av.ts", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        # HTTP is live (drop-oldest): room enough that a consumer reading as fast as it can loses nothing
        source = open_source("web", f"http://127.0.0.1:{port}/av.ts", audio=True, handoff_size=64,
                             audio_handoff_size=400, end_on_eof=True)
        frames, chunks = await read_all(source)
    finally:
        await runner.cleanup()
    assert len(frames) == round(clip.duration_s * clip.fps)
    assert_audio_timeline(chunks)
    assert_aligned(clip, frames, chunks)


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
    print(f"\nRTSP H.264+AAC: beep - flash = {[round(h - s, 3) for h, s in pairs]} s")
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


# --------------------------------------------------------------------------- pushed audio: a light server

PUBLISH = "publish-secret-123"


class PushStreamsHere:
    """The pipeline's side of publishing (``PushControl``), without a pipeline: push sources the
    test reads itself. Streams named ``mute*`` are opened without audio (no speech track)."""

    def __init__(self) -> None:
        from streamcap.sources.push import PushSource

        self._make = PushSource
        self.sources: dict = {}

    def push_source(self, stream_id: str, *, create: bool = True):
        if stream_id not in self.sources:
            if not create:
                raise KeyError(stream_id)
            self.sources[stream_id] = self._make(stream_id, audio=not stream_id.startswith("mute"),
                                                 max_queued_frames=1000, max_queued_audio=10_000)
        return self.sources[stream_id]

    def set_stream_decoding(self, stream_id: str, **overrides) -> None:
        pass

    async def remove_stream(self, stream_id: str) -> None:
        await self.sources.pop(stream_id).aclose()


@pytest.fixture
async def audio_server():
    """A streamcap server with /ingest and /whip over :class:`PushStreamsHere` (no engine)."""
    from streamcap.runtime.config import IngestConfig, WebRTCConfig
    from streamcap.runtime.metrics import Metrics
    from streamcap.server.app import Server
    from streamcap.server.auth import AccessPolicy, Scope
    from streamcap.server.hub import Hub
    from streamcap.server.publishers import PushStreams
    from streamcap.server.routes.ingest import IngestRoutes
    from streamcap.server.routes.whip import WhipRoutes

    control = PushStreamsHere()
    metrics = Metrics()
    ingest = IngestConfig(max_frame_kb=256)
    streams = PushStreams(control, ingest, metrics)
    server = Server(Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=dict,
                    streams=lambda: list(control.sources), access=AccessPolicy({PUBLISH: Scope.PUBLISH}))
    server.extensions += [IngestRoutes(server, control, ingest, default_fps=10.0, streams=streams),
                          WhipRoutes(server, control, WebRTCConfig(loopback_candidates=True), max_ingest_fps=10.0,
                                     streams=streams)]
    async with server:
        yield server, control
    for source in list(control.sources.values()):
        await source.aclose()


async def read_pushed(source, *, audio_s: float = 0.0, frames: int = 0, timeout_s: float = 30.0):
    """Frames and chunks from a push source until ``audio_s`` seconds of sound and ``frames`` frames."""
    got_frames, got_chunks = [], []
    async with asyncio.timeout(timeout_s):
        while sum(len(c.samples) for c in got_chunks) < audio_s * AUDIO_RATE or len(got_frames) < frames:
            item = await source.recv()
            (got_chunks if isinstance(item, AudioChunk) else got_frames).append(item)
    return got_frames, got_chunks


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * AUDIO_RATE / len(samples))


def _ingest_url(server, stream: str) -> str:
    return server.url(f"/ingest/{stream}?token={PUBLISH}").replace("http://", "ws://", 1)


async def _next(ws, kind, timeout_s: float = 10.0):
    from streamcap.outputs import wire

    async with asyncio.timeout(timeout_s):
        while True:
            msg = wire.decode_server_message(await ws.recv())
            if isinstance(msg, kind):
                return msg


async def test_pcm16_over_the_ingest_websocket_becomes_16k_mono_audio_chunks(audio_server):
    import websockets

    from streamcap.outputs import wire
    from tests.helpers.publish import storyline_jpegs, tone_messages
    from streamcap.demo.synthetic import Storyline

    server, control = audio_server
    async with websockets.connect(_ingest_url(server, "mic")) as ws:
        await _next(ws, wire.HelloMsg)
        await ws.send(storyline_jpegs(Storyline(seed=3, scene_s=1000.0, aspect=4 / 3), 0.0, 1)[0])
        assert (await _next(ws, wire.IngestedMsg)).total == 1
        for message in tone_messages(1.0, piece_s=0.02, rate=48_000, channels=2, hz=440.0):
            await ws.send(message)
            ack = await _next(ws, wire.IngestedMsg)
            assert (ack.frames, ack.total) == (0, 1)  # sound is acknowledged, frames count frames
        source = control.sources["mic"]
        frames, chunks = await read_pushed(source, audio_s=0.95, frames=1)
        assert source.state is StreamState.LIVE
    assert len(frames) == 1
    assert_audio_timeline(chunks)
    for a, b in zip(chunks, chunks[1:]):  # sent faster than real time: one continuous piece
        assert b.pts_s == pytest.approx(a.end_s, abs=1e-6)
    assert chunks[0].pts_s >= frames[0].pts_s - 0.05  # on the frames' clock: after the first frame
    heard = np.concatenate([c.samples for c in chunks])
    assert dominant_hz(heard[800:]) == pytest.approx(440, abs=5)
    assert np.abs(heard[800:]).max() == pytest.approx(0.5, abs=0.05)  # stereo mixed, not summed


async def test_malformed_audio_messages_are_refused_and_the_stream_keeps_going(audio_server):
    import struct

    import websockets

    from streamcap.outputs import wire
    from streamcap.sources.audio import encode_pcm16_message
    from tests.helpers.publish import tone, tone_messages

    server, control = audio_server
    good = tone_messages(0.1, piece_s=0.1, rate=16_000, channels=1)[0]
    header = struct.Struct("<4sIHH")
    cases = [
        (b"SCA1\x80\xbb", "bad_message", "header"),  # cut inside the header
        (header.pack(b"SCA1", 4000, 1, 0) + b"\0" * 64, "bad_message", "sample rate 4000"),
        (header.pack(b"SCA1", 48_000, 0, 0) + b"\0" * 64, "bad_message", "0 channels"),
        (header.pack(b"SCA1", 48_000, 200, 0) + b"\0" * 400, "bad_message", "200 channels"),
        (header.pack(b"SCA1", 48_000, 2, 0) + b"\0" * 63, "bad_message", "not whole"),
        (header.pack(b"SCA1", 48_000, 1, 0), "bad_message", "no samples"),
        (header.pack(b"SCA1", 16_000, 1, 1) + b"\0" * 64, "bad_message", "reserved"),
        (encode_pcm16_message(tone(6.0, 8000, 1), 8000, 1), "too_large", "5 s"),  # 96 KB, 6 s
        (encode_pcm16_message(tone(3.0, 48_000, 2), 48_000, 2), "too_large", "limit is 262144"),
    ]
    async with websockets.connect(_ingest_url(server, "mic"), max_size=2**22) as ws:
        await _next(ws, wire.HelloMsg)
        await ws.send(good)
        await _next(ws, wire.IngestedMsg)
        source = control.sources["mic"]
        _, before = await read_pushed(source, audio_s=0.09)
        for bad, code, words in cases:
            await ws.send(bad)
            err = await _next(ws, wire.ErrorMsg)
            assert err.code == code and words in err.detail, (err, words)
            await ws.send(good)  # the connection and the stream still take sound
            await _next(ws, wire.IngestedMsg)
        _, after = await read_pushed(source, audio_s=0.09 * len(cases))
        assert source.state is StreamState.LIVE and not source.closed
    assert_audio_timeline(before + after)


async def test_audio_to_a_stream_without_a_speech_track_is_refused_clearly(audio_server):
    import websockets

    from streamcap.outputs import wire
    from tests.helpers.publish import tone_messages

    server, control = audio_server
    async with websockets.connect(_ingest_url(server, "mute")) as ws:
        await _next(ws, wire.HelloMsg)
        await ws.send(tone_messages(0.02)[0])
        err = await _next(ws, wire.ErrorMsg)
    assert err.code == "bad_message" and "takes no audio" in err.detail


async def test_a_whip_publisher_with_a_microphone_track_gives_audio_chunks_beside_its_frames(audio_server):
    from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

    from tests.helpers.publish import tone_track

    server, control = audio_server
    pc = RTCPeerConnection()
    pc.addTrack(VideoStreamTrack())  # aiortc's green test picture, 30 fps
    pc.addTrack(tone_track(hz=440.0))
    try:
        answer = await _whip_answer(server, pc, "mic")
        assert "m=audio" in answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        source = control.sources["mic"]  # made by the offer, before its answer
        frames, chunks = await read_pushed(source, audio_s=2.0, frames=10, timeout_s=60)
    finally:
        await pc.close()
    assert_audio_timeline(chunks)
    heard = np.concatenate([c.samples for c in chunks])
    assert dominant_hz(heard[-16_000:]) == pytest.approx(440, abs=5)  # Opus there and back
    print(f"\nWHIP: newest sound ends {chunks[-1].end_s:.3f} s, newest picture {frames[-1].pts_s:.3f} s")
    # one clock: the newest sound and the newest picture are within a fraction of a second
    assert abs(chunks[-1].end_s - frames[-1].pts_s) < 0.5, (chunks[-1].end_s, frames[-1].pts_s)
    assert frames[0].pts_s < 1.0 and chunks[0].pts_s < 1.0
    span_s = (chunks[-1].capture_ns - chunks[0].capture_ns) / 1e9  # live: real time
    assert span_s == pytest.approx(chunks[-1].end_s - chunks[0].pts_s, abs=0.5)


def test_an_upload_with_sound_only_is_taken_when_audio_is_wanted(clips, tmp_path):
    from streamcap.core.errors import HttpError
    from streamcap.server.routes.api import _check_video

    audio_only = str(clips["aac_only_mp4"].path)
    _check_video(audio_only, True)
    with pytest.raises(HttpError) as refused:
        _check_video(audio_only, False)
    assert refused.value.status == 422 and "no video stream (audio only)" in refused.value.detail
    neither = str(_subtitles_only(tmp_path / "subs.mkv"))
    with pytest.raises(HttpError) as refused:
        _check_video(neither, True)
    assert refused.value.status == 422 and "no video or audio stream" in refused.value.detail
    assert neither not in refused.value.detail  # the upload's name is never shown


async def test_rtsp_audio_stays_in_order_and_on_its_pictures_across_a_reconnect(audio_rtsp_server, long_clips):
    clip = long_clips["av"]
    server = audio_rtsp_server({"av": clip.path})
    statuses = StatusLog()
    source = open_source("cam", server.url("av"), audio=True, on_status=statuses)
    try:
        before_frames, before_chunks = await collect_until(source, frames=20, chunks=40)
        mark = statuses.mark()
        await asyncio.to_thread(server.kill)
        await statuses.wait_for(StreamState.STALLED, StreamState.RECONNECTING, since=mark, timeout_s=10)
        mark = statuses.mark()
        await asyncio.to_thread(server.start)  # same port; the file plays from its start again
        await statuses.wait_for(StreamState.LIVE, since=mark, timeout_s=15)
        after_frames, after_chunks = await collect_until(source, frames=45, chunks=90)
    finally:
        await source.aclose()
    chunks = before_chunks + after_chunks
    assert_audio_timeline(chunks)  # one timeline: never back, never overlapping across the outage
    frames = before_frames + after_frames
    assert np.all(np.diff([f.pts_s for f in frames]) > 0)
    # after the reconnect, beeps still land on their flashes
    new_chunks = [c for c in after_chunks if c.pts_s > after_frames[0].pts_s]
    onsets, flashes = beep_onsets(new_chunks), flash_times(after_frames)
    assert onsets and flashes, (onsets, flashes)
    for heard in onsets:
        assert min(abs(heard - seen) for seen in flashes) < 1.0 / clip.fps, (onsets, flashes)


async def test_a_whip_publishers_beeps_land_on_its_flashes(audio_server):
    """Sound and picture of one publisher, both paced by their own clocks from the same start:
    a beep and a flash sent together arrive at the same media time (within the 0.1 s between
    kept frames, windows.max_ingest_fps = 10, plus arrival jitter)."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.helpers.publish import flash_track, tone_track

    server, control = audio_server
    pc = RTCPeerConnection()
    pc.addTrack(flash_track(every_s=1.0, flash_s=0.2))
    pc.addTrack(tone_track(hz=1000.0, beep_every_s=1.0, beep_s=0.2))
    try:
        answer = await _whip_answer(server, pc, "mic")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        frames, chunks = await read_pushed(control.sources["mic"], audio_s=4.5, frames=40, timeout_s=60)
    finally:
        await pc.close()
    onsets = beep_onsets(chunks)
    flashes = [f.pts_s for i, f in enumerate(frames) if f.image.mean() > 128
               and (i == 0 or frames[i - 1].image.mean() <= 128)]  # the first white frame of each flash
    pairs = [(heard, min(flashes, key=lambda seen: abs(seen - heard))) for heard in onsets if flashes]
    print(f"\nWHIP: beep - flash = {[round(h - s, 3) for h, s in pairs]} s")
    assert len(pairs) >= 3, (onsets, flashes)
    for heard, seen in pairs[1:]:  # the first may be cut by the start
        assert abs(heard - seen) < 0.2, pairs
