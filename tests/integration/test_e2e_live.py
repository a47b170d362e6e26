"""The whole path, for real: a GStreamer RTSP server on loopback → OpenCV source → ring →
windows → the committed demo model in ONNX Runtime → stabiliser → websocket → a real client that
decodes with ``streamcap.outputs.wire``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request

import pytest

from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.core.types import CaptionState, StreamState
from streamcap.outputs.wire import CaptionMsg, StatusMsg
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

WINDOW_S = 2.0
STRIDE_S = 0.5
#: Issue #2: >= 0.90 of live finals match the ground truth (the committed model: 8 of 8 here).
FINAL_ACCURACY_TARGET = 0.90
FINAL_ACCURACY_FLOOR = FINAL_ACCURACY_TARGET


def _config(sources: dict[str, str], **pipeline):
    return load_config(None, environ={}, overrides={
        "server": {"port": 0},
        "windows": {"stride_s": STRIDE_S},
        "pipeline": pipeline,
        "sources": [{"id": k, "url": v} for k, v in sources.items()],
    })


def _ws(svc: Service, streams: str | None = None) -> str:
    url = svc.url("/ws").replace("http://", "ws://", 1)
    return url + (f"?streams={streams}" if streams else "")


async def _healthz(svc: Service) -> dict:
    """GET /healthz over real HTTP (in a thread: the server runs on this event loop)."""
    def get():
        with urllib.request.urlopen(svc.url("/healthz"), timeout=5) as r:
            assert r.status == 200
            return json.loads(r.read())
    return await asyncio.to_thread(get)


def _states(client: WireClient, stream: str) -> list[tuple[float, StreamState]]:
    return [(t, m.state) for t, m in client.timed(StatusMsg, stream)]


async def test_storyline_over_rtsp_gives_correct_timely_stable_finals(rtsp_server, storyline_video):
    server = rtsp_server({"story": storyline_video.path})
    story = storyline_video.storyline
    until_s = 45.0  # 7 scene changes at 6 s
    # shapes clips: the caption model, not the scene describer
    async with (Service(_config({"story": server.url("story")}, video_engine="caption")) as svc,
                WireClient(_ws(svc)) as client):
        def far_enough():
            caps = client.of(CaptionMsg, "story")
            return caps and caps[-1].end >= until_s
        await client.wait_for(far_enough, timeout=until_s + 40, what=f"captions up to {until_s}s")
    caps = client.of(CaptionMsg, "story")
    seqs = [c.seq for c in caps]
    assert seqs == sorted(set(seqs)), "seq must be strictly increasing"
    finals = [c for c in caps if c.state is CaptionState.FINAL]
    assert len(finals) >= 6

    # 1. each final against the ground truth of the window that made it final
    truth = [story.caption_for_window(f.end - WINDOW_S, f.end) for f in finals]
    accuracy = sum(f.text == t for f, t in zip(finals, truth)) / len(finals)
    for f, t in zip(finals, truth):
        print(f"  [{f.start:6.2f}, {f.end:6.2f}] {f.text!r}{'' if f.text == t else '  != ' + repr(t)}")

    # 2. the final changes within one window + one stride of each scene change
    delays = []
    for change in story.scene_changes(until_s - WINDOW_S - STRIDE_S):
        # the first final made final by a window that mostly shows the new scene
        first = next((f for f in finals if f.end - WINDOW_S / 2 > change), None)
        assert first is not None, f"no final after the scene change at {change}s"
        delays.append(round(first.end - change, 3))
    print(f"finals: {len(finals)}, accuracy {accuracy:.3f} (issue target {FINAL_ACCURACY_TARGET}); "
          f"change delays {delays} (limit {WINDOW_S + STRIDE_S})")
    assert accuracy >= FINAL_ACCURACY_FLOOR
    assert max(delays) <= WINDOW_S + STRIDE_S + 1e-6, delays

    # 3. no final repeats within a scene (the stabiliser never repeats the current final; an
    # A -> B -> A flip would need the model to say B for `agree` windows in a row)
    per_scene: dict[int, list[str]] = {}
    for f in finals:
        per_scene.setdefault(story.index_at(f.end - WINDOW_S / 2), []).append(f.text)
    repeats = {i: t for i, t in per_scene.items() if len(t) != len(set(t))}
    print(f"scenes with a repeated final: {len(repeats)} of {len(per_scene)} (issue target 0): {repeats}")
    for texts in per_scene.values():
        assert all(a != b for a, b in zip(texts, texts[1:])), "a final repeated the one before it"
    assert not repeats


async def test_vtest_over_rtsp_captions_flow_on_the_media_clock(rtsp_server, vtest_long_path):
    server = rtsp_server({"vtest": vtest_long_path})
    async with Service(_config({"cam": server.url("vtest")})) as svc, WireClient(_ws(svc, "cam")) as client:
        await client.wait_for(lambda: any(s is StreamState.LIVE for _, s in _states(client, "cam")),
                              timeout=20, what="cam live")
        await client.wait_for(lambda: client.of(CaptionMsg, "cam"), timeout=20, what="a caption")
        h0, t0 = svc.pipeline.health()["cam"], time.monotonic()
        # vtest's picture changes little, so captions rarely change: count the windows instead
        await client.wait_for(lambda: _windows_captioned(svc, "cam") >= h0["windows_captioned"] + 16 or None,
                              timeout=25, what="16 more windows captioned")
        h1, t1 = svc.pipeline.health()["cam"], time.monotonic()
        hz = (await _healthz(svc))["streams"]["cam"]
    caps = client.of(CaptionMsg, "cam")
    seqs = [c.seq for c in caps]
    assert seqs == sorted(set(seqs)), "seq strictly increasing"
    assert all(c.text for c in caps)
    for c in caps:
        assert c.end > c.start >= 0
        if c.state is CaptionState.PARTIAL:
            assert abs(c.end - c.start - WINDOW_S) < 1e-6
        # window bounds sit on the stride grid of the 10 fps media clock (first frame at 0)
        for t in (c.start, c.end):
            assert abs(t * 10 - round(t * 10)) < 0.02, t
    rate = (h1["media_s"] - h0["media_s"]) / (t1 - t0)
    windows_per_s = (h1["windows_captioned"] - h0["windows_captioned"]) / (t1 - t0)
    print(f"media s per wall s: {rate:.3f}; windows per s {windows_per_s:.2f}; captions {len(caps)}")
    assert 0.8 < rate < 1.2
    assert 0.8 / STRIDE_S * 0.8 < windows_per_s < 1.2 / STRIDE_S
    assert hz["state"] == "live" and hz["windows_captioned"] >= 16
    assert hz["last_window_end_s"] <= hz["media_s"] + 1e-6


def _windows_captioned(svc: Service, stream: str) -> int:
    assert svc.pipeline is not None
    return svc.pipeline.health()[stream]["windows_captioned"]


@pytest.mark.parametrize("fault", ["kill", "sigstop"])
async def test_rtsp_outage_is_reported_and_recovers_while_other_streams_keep_captioning(
        rtsp_server, vtest_long_path, fault):
    server = rtsp_server({"vtest": vtest_long_path})
    sources = {"cam": server.url("vtest"), "demo": "synthetic:shapes?seed=3&fps=10&size=320x240&scene_s=6"}
    async with Service(_config(sources)) as svc, WireClient(_ws(svc)) as client:
        await client.wait_for(lambda: any(s is StreamState.LIVE for _, s in _states(client, "cam")),
                              timeout=20, what="cam live")
        await client.wait_for(lambda: client.of(CaptionMsg, "cam"), timeout=20, what="a cam caption")
        demo_before = _windows_captioned(svc, "demo")
        n_status = len(_states(client, "cam"))
        t_fault = time.monotonic()
        server.kill() if fault == "kill" else server.pause()

        def down():
            return next((t for t, s in _states(client, "cam")[n_status:]
                         if s in (StreamState.STALLED, StreamState.RECONNECTING)), None)
        t_down = await client.wait_for(down, timeout=10, what="stalled/reconnecting")
        detect_s = t_down - t_fault
        n_status = len(_states(client, "cam"))
        t_back = time.monotonic()
        server.restart() if fault == "kill" else server.resume()

        def live_again():
            return next((t for t, s in _states(client, "cam")[n_status:] if s is StreamState.LIVE), None)
        t_live = await client.wait_for(live_again, timeout=15, what="live again")
        recover_s = t_live - t_back
        demo_during = _windows_captioned(svc, "demo") - demo_before
        n_caps = len(client.of(CaptionMsg, "cam"))
        cam_windows = _windows_captioned(svc, "cam")
        # vtest's caption may not change, so "resumed" = the cam stream's windows are captioned again
        await client.wait_for(lambda: _windows_captioned(svc, "cam") > cam_windows or None,
                              timeout=WINDOW_S + 3, what="cam windows captioned again")
        t_resumed = time.monotonic()
    print(f"{fault}: detected in {detect_s:.2f}s, live again {recover_s:.2f}s after restart, "
          f"captioning {t_resumed - t_live:.2f}s after live; demo windows during outage: {demo_during}; "
          f"cam captions {n_caps}")
    assert detect_s <= 3.0
    assert recover_s <= 5.0
    assert t_resumed - t_live <= WINDOW_S + 1.0
    outage_s = t_live - t_fault
    assert demo_during >= int(outage_s / STRIDE_S) - 4, (demo_during, outage_s)


async def test_bad_source_urls_give_error_status_and_nothing_else_stops(caplog):
    caplog.set_level(logging.INFO)
    sources = {"demo": "synthetic:shapes?seed=5&fps=10&size=320x240&scene_s=6",
               "typo": "rtps://camera.local/stream",
               "missing": "/nonexistent/video.mp4"}
    async with Service(_config(sources)) as svc, WireClient(_ws(svc)) as client:
        for sid in ("typo", "missing"):
            await client.wait_for(lambda sid=sid: any(s is StreamState.ERROR for _, s in _states(client, sid)),
                                  timeout=15, what=f"{sid} error status")
        before = _windows_captioned(svc, "demo")
        await client.wait_for(lambda: _windows_captioned(svc, "demo") >= before + 3 or None,
                              timeout=10, what="demo keeps captioning")
        hz = (await _healthz(svc))["streams"]
    assert hz["typo"]["state"] == "error" and "rtps" in hz["typo"]["detail"]
    assert hz["missing"]["state"] == "error"
    assert hz["demo"]["state"] == "live"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("typo" in r.getMessage() for r in errors), [r.getMessage() for r in errors]
