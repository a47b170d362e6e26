"""Stream-health alerts produced by real faults through the real service, seen by a real
websocket client: a stopped RTSP server (stalled), a flapping RTSP server (reconnect storm), a
frozen (repeating) picture and a black picture pushed over /ingest. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
import websockets

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.demo.synthetic import Storyline
from streamcap.core.types import AlertPhase, StreamState
from tests.helpers.publish import b64, encode, storyline_jpegs
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

PUBLISH = "publish-secret-123"
TIMEOUT_S = 30.0


def _config(sources: dict[str, str] | None = None, **health):
    return load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": [{"scope": "publish", "token": PUBLISH}]},
        "ingest": {"max_queued_frames": 256},
        "alerts": {"health": health},
        "sources": [{"id": k, "url": v} for k, v in (sources or {}).items()]})


def _ws(svc: Service, stream: str) -> str:
    return svc.server.ws_url(f"/ws?streams={stream}&token={PUBLISH}")


def _alerts(client: WireClient, stream: str, rule: str) -> list[wire.AlertMsg]:
    return [m for m in client.of(wire.AlertMsg, stream) if m.rule == rule]


def _phases(client: WireClient, stream: str, rule: str) -> list[AlertPhase]:
    return [m.phase for m in _alerts(client, stream, rule)]


async def test_frozen_and_black_pictures_raise_and_clear_alerts():
    story = Storyline(seed=6, scene_s=1000.0, aspect=4 / 3)
    fps = 10.0
    moving = storyline_jpegs(story, 0.0, 200, fps)
    black = encode(np.zeros((240, 320, 3), np.uint8))
    cfg = _config(frozen_s=3.0, blank_s=2.0)
    async with (Service(cfg) as svc,
                websockets.connect(svc.server.ws_url(f"/ingest/cam?token={PUBLISH}"), max_size=2**22) as pub):
        sent = 0

        async def push(frames: list[bytes]) -> None:  # in 1 s batches, each acknowledged
            nonlocal sent
            for i in range(0, len(frames), 10):
                await pub.send(json.dumps({"frames": [b64(f) for f in frames[i:i + 10]], "fps": fps}))
                while not isinstance(wire.decode_server_message(await asyncio.wait_for(pub.recv(), 10)),
                                     wire.IngestedMsg):
                    pass
            sent += len(frames)

        async with WireClient(_ws(svc, "cam")) as viewer:
            await push(moving[:30])
            await push([black] * 50)  # 5 s of black
            await viewer.wait_for(lambda: AlertPhase.START in _phases(viewer, "cam", "health:black"), TIMEOUT_S,
                                  "health:black")
            await push(moving[30:60])  # the picture comes back
            await viewer.wait_for(lambda: AlertPhase.END in _phases(viewer, "cam", "health:black"), TIMEOUT_S,
                                  "health:black to end")
            await push([moving[60]] * 60)  # 6 s of one repeated frame
            await viewer.wait_for(lambda: AlertPhase.START in _phases(viewer, "cam", "health:frozen"), TIMEOUT_S,
                                  "health:frozen")
            await push(moving[60:90])
            await viewer.wait_for(lambda: AlertPhase.END in _phases(viewer, "cam", "health:frozen"), TIMEOUT_S,
                                  "health:frozen to end")
            black_start, black_end = _alerts(viewer, "cam", "health:black")
            assert black_start.id == black_end.id and black_start.severity.value == "warning"
            assert 2.5 <= black_start.start <= 3.5 and 7.5 <= black_end.end <= 8.5  # media time of the black part
            assert "black" in black_start.detail
            frozen_start = _alerts(viewer, "cam", "health:frozen")[0]
            assert 10.5 <= frozen_start.start <= 11.5
            # the black part was not also reported as frozen, and nothing else fired
            assert {m.rule for m in viewer.of(wire.AlertMsg)} == {"health:black", "health:frozen"}
            metrics = svc.metrics.registry.get_sample_value
            assert metrics("streamcap_alerts_total", {"rule": "health:black", "phase": "start"}) == 1.0

            # acknowledge: over the websocket (named), and over HTTP (unknown ids are refused)
            await viewer.send(wire.encode_ack(black_start.id, by="maria"))
            acked = await viewer.wait_for(lambda: viewer.of(wire.AckedMsg), 10, "the ack to be broadcast")
            assert (acked[0].id, acked[0].by) == (black_start.id, "maria")
            await viewer.send(wire.encode_ack("no-such-alert"))
            error = await viewer.wait_for(lambda: viewer.of(wire.ErrorMsg), 10, "an error for an unknown id")
            assert error[0].code == "unknown_alert"
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {PUBLISH}"}) as http:
                async with http.post(svc.url(f"/v1/alerts/{frozen_start.id}/ack"), json={"by": "joe"}) as r:
                    assert r.status == 200 and (await r.json())["acked_by"] == "joe"
                async with http.post(svc.url("/v1/alerts/nope/ack")) as r:
                    assert r.status == 404
                async with http.get(svc.url("/v1/alerts")) as r:
                    listed = {a["id"]: a for a in (await r.json())["alerts"]}
            assert listed[black_start.id]["acked_by"] == "maria" and listed[black_start.id]["phase"] == "end"
            assert listed[frozen_start.id]["acked_by"] == "joe"
            assert metrics("streamcap_alerts_acked_total") == 2.0

        # a dashboard that connects later gets the recent alerts replayed, with who acknowledged them
        async with WireClient(_ws(svc, "cam")) as late:
            await late.wait_for(lambda: len(late.of(wire.AckedMsg)) == 2, 10, "the replay")
            replayed = {m.id: m.phase for m in late.of(wire.AlertMsg)}
            assert replayed == {black_start.id: AlertPhase.END, frozen_start.id: AlertPhase.END}


async def test_a_stopped_rtsp_server_raises_stalled_and_a_flapping_one_a_reconnect_storm(
        rtsp_server, storyline_video):
    server = rtsp_server({"story": storyline_video.path})
    cfg = _config({"cam": server.url("story")}, storm_reconnects=2, storm_window_s=120)
    async with Service(cfg) as svc, WireClient(_ws(svc, "cam")) as viewer:
        def live_count() -> int:
            return sum(m.state is StreamState.LIVE for m in viewer.of(wire.StatusMsg, "cam"))

        await viewer.wait_for(lambda: live_count() >= 1, TIMEOUT_S, "cam live")
        server.kill()  # the camera goes away
        stalled = await viewer.wait_for(lambda: _alerts(viewer, "cam", "health:stalled"), TIMEOUT_S,
                                        "health:stalled")
        assert stalled[0].phase is AlertPhase.START and stalled[0].severity.value == "critical"
        assert stalled[0].caption_seq is None
        server.restart()
        await viewer.wait_for(lambda: AlertPhase.END in _phases(viewer, "cam", "health:stalled"), TIMEOUT_S,
                              "health:stalled to end once frames flow again")
        # flapping: down and up again, twice more
        for _ in range(2):
            lives = live_count()
            server.kill()
            await viewer.wait_for(lambda: any(m.state is StreamState.RECONNECTING
                                              for m in viewer.of(wire.StatusMsg, "cam")[-3:]), TIMEOUT_S,
                                  "reconnecting")
            server.restart()
            await viewer.wait_for(lambda lives=lives: live_count() > lives, TIMEOUT_S, "live again")
        storm = await viewer.wait_for(lambda: _alerts(viewer, "cam", "health:reconnects"), TIMEOUT_S,
                                      "health:reconnects")
        assert storm[0].phase is AlertPhase.START and "reconnects" in storm[0].detail
        reconnects = svc.metrics.registry.get_sample_value("streamcap_source_reconnects_total", {"stream": "cam"})
        assert reconnects >= 3
