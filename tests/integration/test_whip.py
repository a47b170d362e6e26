"""WebRTC ingest over WHIP with real peers: an ``aiortc`` publisher sends vtest.avi (Debian's
opencv-doc sample) to ``POST /whip/cam``; the video is decoded, captioned by the demo model and
the captions reach a real websocket viewer. Bad offers and missing tokens get clear errors while
the server and its other streams keep running."""

from __future__ import annotations

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaPlayer
from av import VideoFrame

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.demo.synthetic import Storyline
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

VIEW, PUBLISH = "view-secret-123", "publish-secret-123"
TOKENS = [{"scope": "view", "token": VIEW}, {"scope": "publish", "token": PUBLISH}]
SDP = "application/sdp"
TIMEOUT_S = 90.0


def _config(**pipeline):
    return load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": TOKENS},
        # publisher and server share this machine: offer loopback candidates (no network needed)
        "webrtc": {"loopback_candidates": True}, "pipeline": pipeline})


@pytest_asyncio.fixture
async def svc():
    async with Service(_config()) as service:
        yield service


@pytest_asyncio.fixture
async def shapes_svc():
    """For storyline (shapes) publishers: the caption model, not the scene describer."""
    async with Service(_config(video_engine="caption")) as service:
        yield service


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def _ws(svc: Service, streams: str) -> str:
    return svc.url(f"/ws?streams={streams}&token={VIEW}").replace("http://", "ws://", 1)


async def _offer(pc) -> str:
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here
    return pc.localDescription.sdp


async def _publish(http, svc: Service, pc, stream: str = "cam") -> None:
    """POST ``pc``'s offer to ``/whip/{stream}`` (expecting 201) and apply the answer."""
    async with http.post(svc.url(f"/whip/{stream}"), data=(await _offer(pc)).encode(),
                         headers={"Content-Type": SDP, "Authorization": f"Bearer {PUBLISH}"}) as r:
        assert r.status == 201, await r.text()
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def test_an_aiortc_publisher_sending_vtest_gets_captioned(svc, http, vtest_path):
    player = MediaPlayer(str(vtest_path))  # decodes the file in real time, like a camera
    pc = RTCPeerConnection()
    pc.addTrack(player.video)
    try:
        async with WireClient(_ws(svc, "cam")) as viewer:
            offer = await _offer(pc)
            async with http.post(svc.url("/whip/cam"), data=offer.encode(),
                                 headers={"Content-Type": SDP, "Authorization": f"Bearer {PUBLISH}"}) as r:
                assert r.status == 201, await r.text()
                assert r.content_type == SDP
                location = r.headers["Location"]
                answer = await r.text()
            assert location.startswith("/whip/cam/") and "a=candidate" in answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

            caption = await viewer.wait_for(lambda: viewer.of(wire.CaptionMsg, "cam"), TIMEOUT_S,
                                            "a caption of the WHIP stream")
            assert caption[0].text.strip()
            await viewer.wait_for(lambda: svc.pipeline.health()["cam"]["windows_captioned"] >= 4, TIMEOUT_S,
                                  "four captioned windows")
            health = svc.pipeline.health()["cam"]
            assert health["state"] == "live" and health["url"] == "push:"
            # vtest is 768x576 at 10 fps: the frames arrive at about the media rate
            assert health["frames_in"] >= 20

            async with http.delete(svc.url(location), headers={"Authorization": f"Bearer {PUBLISH}"}) as r:
                assert r.status == 200
            await viewer.wait_for(lambda: any(m.state.value == "stalled" for m in viewer.of(wire.StatusMsg, "cam")),
                                  10, "the stream to show its publisher left")
            async with http.delete(svc.url(location), headers={"Authorization": f"Bearer {PUBLISH}"}) as r:
                assert r.status == 404
    finally:
        await pc.close()
        player.video.stop()


class StorylineTrack(VideoStreamTrack):
    """A camera-like aiortc video track drawing a storyline at 30 fps; its picture size changes
    after ``switch_after`` frames (as when a publisher changes resolution mid-stream)."""

    def __init__(self, story: Storyline, switch_after: int, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.story, self.switch_after, self.sizes, self.count = story, switch_after, sizes, 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()  # paces the track like a camera
        w, h = self.sizes[0] if self.count < self.switch_after else self.sizes[1]
        frame = VideoFrame.from_ndarray(self.story.render(self.count / 30, w, h, self.count), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


async def test_a_resolution_change_mid_stream_keeps_the_captions_coming(shapes_svc, http):
    story = Storyline(seed=9, scene_s=1000.0, aspect=16 / 9)
    track = StorylineTrack(story, switch_after=75, sizes=[(320, 180), (640, 360)])
    pc = RTCPeerConnection()
    pc.addTrack(track)
    try:
        async with WireClient(_ws(shapes_svc, "cam")) as viewer:
            await _publish(http, shapes_svc, pc)
            whip = shapes_svc.server.extensions[1]
            session = await viewer.wait_for(lambda: next(iter(whip.sessions.values()), None), 10, "the session")
            await viewer.wait_for(lambda: len(session.sizes) == 2, TIMEOUT_S, "frames of both sizes")
            at_switch = shapes_svc.pipeline.health()["cam"]["windows_captioned"]
            await viewer.wait_for(lambda: shapes_svc.pipeline.health()["cam"]["windows_captioned"] >= at_switch + 6,
                                  TIMEOUT_S, "six more windows after the switch")
            assert session.sizes == {(320, 180), (640, 360)}
            finals = {m.text for m in viewer.of(wire.CaptionMsg, "cam") if m.state.value == "final"}
            assert finals == {story.caption_at(0.0)}
    finally:
        await pc.close()


async def test_bad_offers_and_missing_tokens_are_refused_and_the_server_keeps_going(svc, http):
    url = svc.url("/whip/cam")
    good_headers = {"Content-Type": SDP, "Authorization": f"Bearer {PUBLISH}"}
    broken = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"
    cases = [
        ({"data": b"hello there"}, good_headers, 400, "bad_sdp"),
        ({"data": b"v=0\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\n"}, good_headers, 400, "bad_sdp"),
        ({"data": broken.encode()}, good_headers, 400, "bad_sdp"),  # no ICE credentials, no fingerprint
        ({"data": b"\xff\xfe\x00garbage"}, good_headers, 400, "bad_sdp"),
        ({"data": b"v=0"}, {"Content-Type": "text/plain", "Authorization": f"Bearer {PUBLISH}"}, 415,
         "bad_content_type"),
        ({"data": b"v=0" + b" " * (2 << 20)}, good_headers, 413, "too_large"),
        ({"data": b"v=0"}, {"Content-Type": SDP}, 401, "unauthorized"),
        ({"data": b"v=0"}, {"Content-Type": SDP, "Authorization": f"Bearer {VIEW}"}, 403, "forbidden"),
    ]
    for kwargs, headers, status, code in cases:
        async with http.post(url, headers=headers, **kwargs) as r:
            doc = await r.json()
            assert (r.status, doc["error"]["code"]) == (status, code), doc
            assert doc["error"]["detail"]
    async with http.delete(svc.url("/whip/cam/nope"), headers={"Authorization": f"Bearer {PUBLISH}"}) as r:
        assert r.status == 404
    async with http.patch(svc.url("/whip/cam/nope"), data=b"a=candidate", headers=good_headers) as r:
        assert r.status == 405
    # a malformed offer did not leave a half-made stream, and the demo stream is still live
    assert svc.pipeline.stream_ids() == ["demo"]
    async with WireClient(_ws(svc, "demo")) as viewer:
        await viewer.wait_for(lambda: svc.pipeline.health()["demo"]["windows_captioned"] > 0, TIMEOUT_S,
                              "the demo stream to be captioned")


async def test_offers_without_a_dtls_fingerprint_or_with_a_broken_bundle_are_refused_before_aiortc_sees_them(svc, http):
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
    finally:
        await pc.close()
    assert "a=fingerprint:" in offer
    stripped = "".join(line for line in offer.splitlines(keepends=True) if not line.startswith("a=fingerprint:"))
    # found by tools/fuzz.py (seed 9): a BUNDLE group naming a mid that no section has left aiortc
    # a transceiver without a transport: createAnswer and then close raised, a 500 and a traceback
    bad_bundle = offer.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0up:BUNDLE 0")
    assert bad_bundle != offer
    headers = {"Content-Type": SDP, "Authorization": f"Bearer {PUBLISH}"}
    # (before: 201, then aiortc's connect task died on an assertion nobody awaited)
    for sdp, words in [(stripped, "fingerprint"), (bad_bundle, "BUNDLE")]:
        async with http.post(svc.url("/whip/cam"), data=sdp.encode(), headers=headers) as r:
            doc = await r.json()
            assert (r.status, doc["error"]["code"]) == (400, "bad_sdp"), doc
            assert words in doc["error"]["detail"]
    assert svc.pipeline.stream_ids() == ["demo"]


async def _metrics(svc: Service, http) -> str:
    async with http.get(svc.url("/metrics"), headers={"Authorization": f"Bearer {VIEW}"}) as r:
        assert r.status == 200
        return await r.text()


async def test_offers_that_never_connect_free_their_slots_and_streams_after_the_deadline(http):
    other = "publish-secret-456"
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": [*TOKENS, {"scope": "publish", "token": other}]},
        "webrtc": {"loopback_candidates": True, "max_sessions": 2, "max_sessions_per_token": 1,
                   "connect_timeout_s": 1.0}})
    peers = [RTCPeerConnection() for _ in range(4)]
    try:
        async with Service(cfg) as svc:
            whip = svc.server.extensions[1]

            async def offer(stream: str, token: str, pc) -> tuple[int, dict | str]:
                pc.addTrack(VideoStreamTrack())
                async with http.post(svc.url(f"/whip/{stream}"), data=(await _offer(pc)).encode(),
                                     headers={"Content-Type": SDP, "Authorization": f"Bearer {token}"}) as r:
                    return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

            # answered, but the publishers never apply the answer: nothing ever connects
            assert (await offer("ghost1", PUBLISH, peers[0]))[0] == 201
            status, doc = await offer("ghost2", PUBLISH, peers[1])
            assert status == 429 and doc["error"]["code"] == "too_many_sessions"
            assert "webrtc.max_sessions_per_token" in doc["error"]["detail"]
            assert (await offer("ghost3", other, peers[2]))[0] == 201
            status, doc = await offer("ghost4", other, peers[3])
            assert status == 503 and doc["error"]["code"] == "too_many_sessions"
            assert set(svc.pipeline.stream_ids()) == {"demo", "ghost1", "ghost3"}
            async with WireClient(_ws(svc, "demo")) as viewer:
                await viewer.wait_for(lambda: not whip.sessions, 15, "the unconnected sessions to be closed")
                await viewer.wait_for(lambda: svc.pipeline.stream_ids() == ["demo"], 10,
                                      "their streams to be removed")
            metrics = await _metrics(svc, http)
            assert 'streamcap_whip_sessions_closed_total{reason="connect_timeout"} 2.0' in metrics
            assert 'streamcap_push_streams_removed_total{reason="never_connected"} 2.0' in metrics
            assert 'streamcap_limit_refusals_total{limit="max_sessions_per_token"} 1.0' in metrics
            assert 'streamcap_limit_refusals_total{limit="max_sessions"} 1.0' in metrics
            # the slots are free again: a real publisher connects and is captioned
            pc = RTCPeerConnection()
            peers.append(pc)
            story = Storyline(seed=9, scene_s=1000.0, aspect=16 / 9)
            pc.addTrack(StorylineTrack(story, switch_after=10**9, sizes=[(320, 180), (320, 180)]))
            async with WireClient(_ws(svc, "cam")) as viewer:
                await _publish(http, svc, pc)
                await viewer.wait_for(lambda: viewer.of(wire.CaptionMsg, "cam"), TIMEOUT_S, "a caption of cam")
                session = next(iter(whip.sessions.values()))
                assert session.connected and not session.closed  # the deadline left a connected session alone
    finally:
        for pc in peers:
            await pc.close()


async def test_whip_frames_over_max_pixels_are_dropped_before_conversion_and_counted(http):
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": TOKENS}, "ingest": {"max_pixels": 64 * 64},
        "webrtc": {"loopback_candidates": True}})
    story = Storyline(seed=9, scene_s=1000.0, aspect=16 / 9)
    track = StorylineTrack(story, switch_after=90, sizes=[(320, 180), (64, 36)])  # 3 s too big, then small
    pc = RTCPeerConnection()
    pc.addTrack(track)
    try:
        async with Service(cfg) as svc, WireClient(_ws(svc, "cam")) as viewer:
            await _publish(http, svc, pc)
            whip = svc.server.extensions[1]
            session = await viewer.wait_for(lambda: next(iter(whip.sessions.values()), None), 10, "the session")

            def dropped() -> float:
                return svc.metrics.registry.get_sample_value(
                    "streamcap_limit_refusals_total", {"limit": "max_pixels"}) or 0.0

            await viewer.wait_for(lambda: dropped() >= 3, TIMEOUT_S, "big frames to be dropped")
            if session.sizes == {(320, 180)}:  # still before the switch: nothing got through
                assert session.frames == 0 and svc.pipeline.health()["cam"]["frames_in"] == 0
            await viewer.wait_for(lambda: session.frames >= 5, TIMEOUT_S, "small frames to be taken")
            assert (64, 36) in session.sizes and dropped() == session.refused_frames >= 3
    finally:
        await pc.close()
