"""The speech track end to end, with the real Whisper base engine and silero VAD
(``streamcap models install whisper-base silero-vad``) on espeak-ng speech we make at run time
(:mod:`tools.speech_media`: our script, word-level truth, silence and noise stretches):

- ``streamcap caption clip.mp4 --tracks speech,video`` in JSON Lines, WebVTT and SRT;
- live through the real loopback RTSP server (H.264 + AAC), scored by ``tools/speech_eval.py``;
- live through WHIP from a real aiortc publisher sending the clip's sound and picture;
- ``POST /v1/captions?tracks=speech,video`` (JSON and ``?format=vtt``).

Speed is not asserted here (tools/speech_eval.py and tools/bench_speech.py measure it, docs/speech.md).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import srt
import webvtt

from streamcap.outputs import wire
from streamcap.runtime.config import Config, load_config
from streamcap.runtime.service import Service
from tests.conftest import unavailable
from tests.helpers.wsclient import WireClient
from tools.wer import load_truth, word_error_rate, words_in_quiet

pytestmark = pytest.mark.integration

CLIP = "c1-en-us"  # four sentences, 66 words, silence and noise stretches between them
MAX_WER = 0.15  # on one short clip; the 300-word set is measured by tools/speech_eval.py
VIEW, PUBLISH = "view-secret-123", "publish-secret-123"
TOKENS = [{"scope": "view", "token": VIEW}, {"scope": "publish", "token": PUBLISH}]


@pytest.fixture(scope="module")
def speech_models() -> None:
    if not Config().speech.installed():
        unavailable("the speech models are not installed (streamcap models install whisper-base silero-vad)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, speech_models) -> Path:
    """``CLIP``.mp4 (shapes video + the spoken clip as AAC) with its truth beside it."""
    from tools import speech_media

    out = tmp_path_factory.mktemp("speech")
    try:
        speech_media.generate(out, with_video=True, clips=[p for p in speech_media.CLIPS if p.name == CLIP])
    except speech_media.MediaToolError as e:
        unavailable(str(e))
    return out / f"{CLIP}.mp4"


def _truth(clip: Path):
    return load_truth(clip.with_suffix(".json"))


def _check_speech(truth, finals_text: list[str], words) -> None:
    score = word_error_rate(truth.text, finals_text)
    assert score.wer <= MAX_WER, (score, finals_text)
    assert words_in_quiet(words, truth.quiet) == [], "words emitted inside silence or noise"


def _caption(clip: Path, fmt: str, out: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", str(clip), "--tracks", "speech,video",
                           "--format", fmt, "-o", str(out), "--no-progress", "--language", "en"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out.read_text(encoding="utf-8")


def test_caption_writes_speech_and_picture_as_jsonl_vtt_and_srt(clip, tmp_path):
    truth = _truth(clip)
    lines = [json.loads(line) for line in _caption(clip, "jsonl", tmp_path / "out.jsonl").splitlines()]
    assert lines and all({"track", "state", "text", "start", "end"} <= set(d) for d in lines)
    speech = [d for d in lines if d["track"] == "speech"]
    assert {d["track"] for d in lines} == {"speech", "video"}
    assert all(d["state"] == "final" for d in lines)
    words = [{"text": w["w"], "start_s": w["start"], "end_s": w["end"]} for d in speech for w in d["words"]]
    _check_speech(truth, [d["text"] for d in speech], words)
    first_word = truth.sentences[0]["words"][0]
    assert abs(speech[0]["start"] - first_word["start_s"]) < 1.0  # the words are where they were said

    vtt = webvtt.from_buffer(io.StringIO(_caption(clip, "vtt", tmp_path / "out.vtt")))
    texts = [" ".join(c.text.split()) for c in vtt.captions]
    assert any(t.startswith("[") and t.endswith("]") for t in texts)  # the picture, between sentences
    spoken = [t for t in texts if not t.startswith("[")]
    assert word_error_rate(truth.text, spoken).wer <= MAX_WER
    for cue in vtt.captions:
        assert all(len(line) <= 42 for line in cue.text.splitlines()) and len(cue.text.splitlines()) <= 2
    subs = list(srt.parse(_caption(clip, "srt", tmp_path / "out.srt")))
    assert [" ".join(s.content.split()) for s in subs] == texts  # the same cues in both formats


def test_speech_through_a_real_rtsp_server_live(clip, rtsp_required):
    from tools.speech_eval import evaluate

    engine = str(Path(Config().speech.engine_path))
    report = evaluate(clip.parent, CLIP, engine)
    assert report["streaming_wer"] <= MAX_WER, report
    assert report["words_in_quiet"] == [], report["words_in_quiet"]
    matched = report["latency"]["final"]["n"]
    assert matched >= 0.9 * report["reference_words"], report["latency"]


@pytest.fixture
def rtsp_required():
    from tests.helpers.rtsp import rtsp_server_available

    reason = rtsp_server_available()
    if reason:
        unavailable(reason)


@pytest_asyncio.fixture
async def svc(speech_models):
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": TOKENS}, "speech": {"enabled": True, "language": "en"},
        "webrtc": {"loopback_candidates": True}, "ingest": {"max_upload_mb": 16}})
    async with Service(cfg) as service:
        yield service


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        yield session


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_speech_through_whip_from_an_aiortc_publisher(svc, http, clip):
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    truth = _truth(clip)
    last_word = truth.sentences[-1]["words"][-1]["text"]
    player = MediaPlayer(str(clip))  # plays the file in real time, sound and picture, like a camera
    pc = RTCPeerConnection()
    pc.addTrack(player.audio)
    pc.addTrack(player.video)
    finals: dict[int, wire.CaptionMsg] = {}
    try:
        ws = svc.url(f"/ws?streams=talk&token={VIEW}").replace("http://", "ws://", 1)
        async with WireClient(ws) as viewer:
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(svc.url("/whip/talk"), data=pc.localDescription.sdp.encode(),
                                 headers={"Content-Type": "application/sdp", **_auth(PUBLISH)}) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

            def heard_to_the_end():
                for m in viewer.of(wire.CaptionMsg, "talk"):
                    if m.track == "speech" and m.state.value == "final":
                        finals[m.seq] = m
                return any(last_word.strip(".,!?").lower() in m.text.lower() for m in finals.values())

            await viewer.wait_for(heard_to_the_end, truth.duration_s + 90, "the clip's last spoken word")
    finally:
        await pc.close()
        player.audio.stop()
        player.video.stop()
    ordered = [finals[k] for k in sorted(finals)]
    # the publisher's clock starts when it connects: compare words, not times
    score = word_error_rate(truth.text, [m.text for m in ordered])
    assert score.wer <= MAX_WER, (score, [m.text for m in ordered])
    assert all(m.words for m in ordered)


async def test_upload_captions_speech_as_json_and_vtt(svc, http, clip):
    truth = _truth(clip)
    body = {"video": base64.b64encode(clip.read_bytes()).decode()}
    async with http.post(svc.url("/v1/captions?tracks=speech,video"), json=body, headers=_auth(PUBLISH)) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    speech = [c for c in doc["captions"] if c["track"] == "speech"]
    assert any(c["track"] == "video" for c in doc["captions"])
    words = [{"text": w["w"], "start_s": w["start"], "end_s": w["end"]} for c in speech for w in c["words"]]
    _check_speech(truth, [c["text"] for c in speech], words)
    async with http.post(svc.url("/v1/captions?tracks=speech&format=vtt"), json=body, headers=_auth(PUBLISH)) as r:
        assert r.status == 200 and r.content_type == "text/vtt"
        cues = [" ".join(c.text.split()) for c in webvtt.from_buffer(io.StringIO(await r.text())).captions]
    assert cues and not any(c.startswith("[") for c in cues)  # speech only: no picture cues
    assert word_error_rate(truth.text, cues).wer <= MAX_WER
    sound_only = {"video": base64.b64encode(clip.with_suffix(".wav").read_bytes()).decode()}  # a stream may be audio-only
    async with http.post(svc.url("/v1/captions?tracks=speech&format=jsonl"), json=sound_only,
                         headers=_auth(PUBLISH)) as r:
        assert r.status == 200, await r.text()
        lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert lines and {d["track"] for d in lines} == {"speech"}
    assert word_error_rate(truth.text, [d["text"] for d in lines]).wer <= MAX_WER
    async with http.post(svc.url("/v1/captions?tracks=smell"), json=body, headers=_auth(PUBLISH)) as r:
        assert r.status == 400 and "tracks" in (await r.json())["error"]["detail"]


async def test_a_live_stream_serves_its_speech_track_as_webvtt_and_chapters(svc, http, clip):
    """A stream of the clip (read as a file, live rules off): once its last word is a final on the
    websocket, the speech track's chapters and live WebVTT playlist carry it."""
    truth = _truth(clip)
    last = truth.sentences[-1]["words"][-1]["text"].strip(".").lower()
    ws = svc.url(f"/ws?streams=talk&token={VIEW}").replace("http://", "ws://", 1)
    async with WireClient(ws) as viewer:
        svc.pipeline.add_stream("talk", str(clip))
        await viewer.wait_for(lambda: any(m.track == "speech" and m.state.value == "final" and last in m.text.lower()
                                          for m in viewer.of(wire.CaptionMsg, "talk")),
                              truth.duration_s + 120, "the clip's last word as a speech final")
    async with http.get(svc.url("/v1/streams/talk/chapters?track=speech"), headers=_auth(VIEW)) as r:
        assert r.status == 200, await r.text()
        chapters = (await r.json())["chapters"]
    assert any(last in c["title"].lower() for c in chapters), chapters
    async with http.get(svc.url("/v1/streams/talk/subtitles.m3u8?track=speech"), headers=_auth(VIEW)) as r:
        assert r.status == 200
        assert "#EXTM3U" in await r.text()
    async with http.get(svc.url("/v1/streams/talk/chapters?track=smell"), headers=_auth(VIEW)) as r:
        assert r.status == 400
