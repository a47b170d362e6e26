"""The scene describer for real: vtest.avi (pedestrians, a fixed camera) over a GStreamer RTSP
server on loopback and over WHIP from an aiortc publisher → the committed NanoDet detector →
captions with structured objects, read by a real websocket client; an object alert rule through
the pipeline on a clip whose scene empties."""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from streamcap.core.types import AlertPhase, CaptionState, StreamState
from streamcap.engine.base import load_describer_from_config, load_engine_from_config
from streamcap.outputs.wire import CaptionMsg, StatusMsg
from streamcap.runtime.config import load_config
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.pipeline import Pipeline
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient
from tools import media

pytestmark = pytest.mark.integration

STRIDE_S = 0.5
PUBLISH = "publish-secret-123"


def _config(sources: dict[str, str] | None = None, video_engine: str = "describer", **more):
    return load_config(None, environ={}, overrides={
        "server": {"port": 0}, "windows": {"stride_s": STRIDE_S},
        # vtest.avi is a real picture: "auto" picks the describer too; say it, the test is about it
        "pipeline": {"video_engine": video_engine},
        "sources": [{"id": k, "url": v} for k, v in (sources or {}).items()], **more})


def _ws(svc: Service, stream: str) -> str:
    return svc.url(f"/ws?streams={stream}").replace("http://", "ws://", 1)


def _windows(svc: Service, stream: str) -> int:
    assert svc.pipeline is not None
    return svc.pipeline.health()[stream]["windows_captioned"]


def _check_described(caps: list[CaptionMsg], windows: int, seconds: float) -> None:
    """Captions of a vtest stream: seq increasing, people counted in the objects and named in
    the text, a partial for most windows, windows at the stride."""
    assert caps, "no caption"
    seqs = [c.seq for c in caps]
    assert seqs == sorted(set(seqs)), "seq strictly increasing"
    with_people = [c for c in caps if any(o.label == "person" for o in c.objects)]
    # someone walks through vtest.avi all the time
    assert len(with_people) >= 0.9 * len(caps), [c.text for c in caps if c not in with_people]
    for c in with_people:
        people = sum(o.count for o in c.objects if o.label == "person")
        assert 1 <= people <= 15
        assert ("person" in c.text) or ("people" in c.text), c.text
        for o in c.objects:
            assert all(0 <= v <= 1 for b in o.boxes for v in b) and len(o.boxes) == o.count
    partials = [c for c in caps if c.state is CaptionState.PARTIAL]
    # counts or motions change nearly every window in a busy scene: captions flow at the stride
    assert len(partials) >= 0.5 * windows, (len(partials), windows)
    rate = windows / seconds
    assert 0.7 / STRIDE_S < rate < 1.3 / STRIDE_S, rate


async def test_vtest_over_rtsp_is_described_at_the_stride_next_to_a_synthetic_stream(rtsp_server, vtest_long_path):
    """auto: the RTSP camera gets the describer, the synthetic stream the caption model; the two
    engines share one engine thread and both keep up."""
    server = rtsp_server({"vtest": vtest_long_path})
    sources = {"cam": server.url("vtest"), "shapes": "synthetic:shapes?seed=3&fps=10&size=320x240"}
    async with Service(_config(sources, video_engine="auto")) as svc, WireClient(_ws(svc, "cam,shapes")) as client:
        assert svc.pipeline.runners["cam"].engine_key == "describer"
        assert svc.pipeline.runners["shapes"].engine_key == "default"
        await client.wait_for(lambda: any(m.state is StreamState.LIVE for m in client.of(StatusMsg, "cam")),
                              timeout=30, what="cam live")
        await client.wait_for(lambda: client.of(CaptionMsg, "cam"), timeout=30, what="a caption")
        w0, t0, n0 = _windows(svc, "cam"), time.monotonic(), len(client.of(CaptionMsg, "cam"))
        s0 = _windows(svc, "shapes")
        await client.wait_for(lambda: _windows(svc, "cam") >= w0 + 16 or None, timeout=30,
                              what="16 more windows described")
        w1, t1, s1 = _windows(svc, "cam"), time.monotonic(), _windows(svc, "shapes")
        health = svc.pipeline.health()
        metrics = svc.metrics.render()[0].decode()
    caps = client.of(CaptionMsg, "cam")
    _check_described(caps[n0:], w1 - w0, t1 - t0)
    # the synthetic stream kept its pace beside it (the caption model's windows were not starved)
    assert (s1 - s0) / (t1 - t0) > 0.7 / STRIDE_S
    assert (health["cam"]["engine"], health["shapes"]["engine"]) == ("describer", "caption")
    shapes = client.of(CaptionMsg, "shapes")
    assert shapes and not any(c.objects for c in shapes)  # caption models count no objects
    # the describer detects each frame once: windows a stride apart share 3 of their 4 frames
    hits = [float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("streamcap_frame_cache_total") and 'result="hit"' in line
            and 'engine="describer"' in line]
    assert hits and hits[0] > 0, [line for line in metrics.splitlines() if "frame_cache" in line]
    # every window's pipeline overhead is recorded, per engine
    for engine in ("describer", "caption"):
        counts = [float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith(f'streamcap_pipeline_overhead_seconds_count{{engine="{engine}"}}')]
        assert counts and counts[0] > 0, engine


async def test_vtest_over_whip_from_an_aiortc_publisher_is_described(vtest_path):
    cfg = _config(auth={"tokens": [{"scope": "publish", "token": PUBLISH}], "public_view": True},
                  webrtc={"loopback_candidates": True})
    player = MediaPlayer(str(vtest_path))  # decodes the file in real time, like a camera
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(player.video)
    try:
        async with (Service(cfg) as svc, WireClient(_ws(svc, "cam")) as viewer,
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http):
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(svc.url("/whip/cam"), data=pc.localDescription.sdp.encode(),
                                 headers={"Content-Type": "application/sdp",
                                          "Authorization": f"Bearer {PUBLISH}"}) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await viewer.wait_for(lambda: viewer.of(CaptionMsg, "cam"), 90, "a caption of the WHIP stream")
            w0, t0, n0 = _windows(svc, "cam"), time.monotonic(), len(viewer.of(CaptionMsg, "cam"))
            await viewer.wait_for(lambda: _windows(svc, "cam") >= w0 + 12 or None, 40, "12 more windows described")
            w1, t1 = _windows(svc, "cam"), time.monotonic()
            assert svc.pipeline.runners["cam"].engine_key == "describer"
        _check_described(viewer.of(CaptionMsg, "cam")[n0:], w1 - w0, t1 - t0)
    finally:
        await pc.close()
        player.video.stop()


async def test_a_person_rule_fires_on_vtest_and_ends_when_the_scene_empties(vtest_path, media_cache_dir):
    people_s, empty_s = 12.0, 8.0
    clip = media_cache_dir / "vtest-12s-then-empty-8s.avi"
    if not clip.is_file():
        media.make_emptying_clip(vtest_path, clip, people_s=people_s, empty_s=empty_s)
    cfg = _config(alerts={"rules": [{"name": "someone there", "objects": {"label": "person"},
                                     "min_duration_s": 2.0, "end_after_s": 1.0, "cooldown_s": 0.0}]})
    engine = load_engine_from_config(cfg.engine)
    describer = load_describer_from_config(cfg.describer, cfg.engine)
    assert describer is not None
    alerts, captions = [], []
    pipeline = Pipeline(cfg, engine, metrics=Metrics(), describer=describer, on_alert=alerts.append,
                        on_caption=captions.append)
    pipeline.add_stream("gate", str(clip))
    await pipeline.run(stop_when_idle=True)
    mine = [a for a in alerts if a.rule == "someone there"]
    phases = [a.phase for a in mine]
    assert phases[0] is AlertPhase.START and phases[-1] is AlertPhase.END, phases
    assert phases.count(AlertPhase.START) == 1 and phases.count(AlertPhase.END) == 1, phases
    start, end = mine[0], mine[-1]
    assert start.id == end.id
    # people from the first window on; it starts once they have been there 2 s of media time
    assert start.start_s <= 3.0
    # nobody after 12 s: the first window without people ends by 12 s + a window; it ends there
    assert people_s <= end.end_s <= people_s + 2.0 + 1.0, end
    assert "person" in end.detail or "person" in start.detail
    empty_captions = [c for c in captions if c.start_s >= people_s + 0.5]
    assert empty_captions and all(not any(o.label == "person" for o in c.objects) for c in empty_captions)
