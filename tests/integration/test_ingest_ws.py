"""Websocket frame ingest (``/ingest/{stream}``) against the real service and a real websocket
client: storyline frames pushed as JSON batches and binary JPEGs are captioned by the demo model
and the captions come back on the same connection; bad messages get an ``error`` and the
connection (and every other stream) keeps working; publishing needs a ``publish`` token."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.demo.synthetic import Storyline
from tests.helpers.publish import b64, encode, storyline_jpegs
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

VIEW = "view-secret-123"
PUBLISH = "publish-secret-123"
TOKENS = [{"scope": "view", "token": VIEW}, {"scope": "publish", "token": PUBLISH}]
TIMEOUT_S = 60.0
WINDOW_S = 2.0  # the demo engine's window


def _config(auth: dict | None = None, **ingest):
    return load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": TOKENS} if auth is None else auth, "ingest": ingest,
        # the pushed frames are storyline shapes: the caption model, not the scene describer
        "pipeline": {"video_engine": "caption"}})


def _ingest_url(svc: Service, stream: str, token: str | None = PUBLISH) -> str:
    url = svc.url(f"/ingest/{stream}").replace("http://", "ws://", 1)
    return url + (f"?token={token}" if token else "")


class IngestClient:
    """A publisher on /ingest that also reads what the server sends back."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.kept: list = []  # messages read while looking for something else

    async def next(self, kind: type | tuple[type, ...], timeout: float = TIMEOUT_S):
        """The next message of ``kind``; the others read on the way are kept."""
        async with asyncio.timeout(timeout):
            while True:
                msg = wire.decode_server_message(await self.ws.recv())
                if isinstance(msg, kind):
                    return msg
                self.kept.append(msg)

    async def wait_until(self, predicate, timeout: float, what: str, poll_s: float = 0.1) -> None:
        """Read (and keep) messages until ``predicate()`` holds (it may look at server state,
        hence the poll); fails after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            try:
                self.kept.append(wire.decode_server_message(await asyncio.wait_for(self.ws.recv(), poll_s)))
            except TimeoutError:
                continue


async def test_pushed_frames_are_captioned_and_captions_come_back_on_the_connection():
    story = Storyline(seed=5, scene_s=1000.0, aspect=320 / 240)
    truth = story.caption_at(0.0)
    fps, batch = 10.0, 10
    async with Service(_config()) as svc, websockets.connect(_ingest_url(svc, "phone"), max_size=2**22) as ws:
        client = IngestClient(ws)
        hello = await client.next(wire.HelloMsg)
        assert hello.subscribed == ("phone",)
        sent = 0
        for k in range(8):  # 8 s of media: the first 4 s as JSON batches, then binary frames
            frames = storyline_jpegs(story, k * batch / fps, batch, fps)
            if k < 4:
                await ws.send(json.dumps({"frames": [b64(f) for f in frames], "fps": fps, "max_length": 20}))
                ack = await client.next(wire.IngestedMsg)
                assert ack.frames == batch
            else:
                for f in frames:
                    await ws.send(f)
                    ack = await client.next(wire.IngestedMsg)
                    assert ack.frames == 1
            sent += batch
            assert ack.total == sent and ack.stream == "phone"
            media_s = sent / fps
            if k < 4 and media_s >= WINDOW_S + 0.5:
                # pace the JSON publisher by the engine: on once this batch's last window is captioned
                # (its nominal end is within a stride of the last frame, m - 0.1; its true end on
                # the caption model's 0.4 s frame grid is up to a step before that)
                await client.wait_until(
                    lambda m=media_s: (svc.pipeline.health()["phone"]["last_window_end_s"] or 0) >= m - 1.0,
                    TIMEOUT_S, f"a window ending near {media_s} s")
        captions = [m for m in client.kept if isinstance(m, wire.CaptionMsg)]
        assert {m.stream for m in captions} == {"phone"}  # only this stream's captions on this socket
        await client.wait_until(lambda: any(m.state == "final" for m in client.kept
                                            if isinstance(m, wire.CaptionMsg)), TIMEOUT_S, "a final")
        captions = [m for m in client.kept if isinstance(m, wire.CaptionMsg)]
        finals = [m.text for m in captions if m.state == "final"]
        assert finals and set(finals) == {truth}, (captions, truth)
        health = svc.pipeline.health()["phone"]
        assert health["state"] == "live" and health["frames_in"] == sent
        assert health["windows_captioned"] >= 4  # the binary burst arrives faster than real time: some windows skip


async def _expect_error(client: IngestClient, code: str) -> wire.ErrorMsg:
    err = await client.next(wire.ErrorMsg, timeout=10)
    assert err.code == code and err.detail
    return err


async def test_bad_messages_get_an_error_and_the_connection_and_other_streams_keep_going():
    story = Storyline(seed=3, scene_s=1000.0, aspect=320 / 240)
    good = storyline_jpegs(story, 0.0, 1)[0]
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    too_big = encode(noise, ".png")  # ~190 KB of incompressible PNG
    assert len(too_big) > 64 * 1024
    cfg = _config(max_frame_kb=64, max_frames_per_message=4)
    async with (Service(cfg) as svc,
                WireClient(svc.url("/ws").replace("http://", "ws://", 1) + f"?streams=demo&token={VIEW}") as viewer,
                websockets.connect(_ingest_url(svc, "cam"), max_size=2**22) as ws):
        client = IngestClient(ws)
        await client.next(wire.HelloMsg)
        cases = [
            (b"\x00garbage that is no image", "bad_frame"),
            (b"\xff\xd8\xff" + b"\x00" * 500, "bad_frame"),  # a JPEG signature, then nothing decodable
            (too_big, "too_large"),
            ("{not json", "bad_message"),
            (json.dumps({"frames": ["###not base64###"]}), "bad_frame"),
            (json.dumps({"frames": [b64(b"plain text, not an image")]}), "bad_frame"),
            (json.dumps({"frames": [b64(good)] * 5}), "too_large"),
            (json.dumps({"frames": [b64(good)], "max_length": 0}), "bad_message"),
            (json.dumps({"type": "ping"}), "bad_message"),
        ]
        total = 0
        for bad, code in cases:
            await ws.send(bad)
            err = await _expect_error(client, code)
            await ws.send(good)  # the connection is still usable
            ack = await client.next(wire.IngestedMsg, timeout=10)
            total += 1
            assert ack.total == total, err
        # the demo stream was captioned all along, and still is
        seen = len(viewer.of(wire.CaptionMsg, "demo"))
        await viewer.wait_for(lambda: len(viewer.of(wire.CaptionMsg, "demo")) > seen, TIMEOUT_S, "a demo caption")
        metrics = await asyncio.to_thread(_get, svc.url(f"/metrics?token={VIEW}"))  # /metrics needs view
        assert f'streamcap_frames_in_total{{stream="cam"}} {total}.0' in metrics
        assert 'streamcap_bad_requests_total{code="bad_frame"} 4.0' in metrics
        assert 'streamcap_bad_requests_total{code="too_large"} 2.0' in metrics


def _get(url: str) -> str:
    """GET with the view token (/metrics and /healthz details need it when tokens are configured)."""
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {VIEW}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.read().decode()


async def _close_of(url: str) -> tuple[int, str]:
    async with websockets.connect(url, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_publishing_needs_a_publish_token():
    async with Service(_config()) as svc:
        code, reason = await _close_of(_ingest_url(svc, "cam", token=None))
        assert code == 4401 and "publish needs a token" in reason
        assert await _close_of(_ingest_url(svc, "cam", token="not-a-token")) == (4401, "unknown token")
        code, reason = await _close_of(_ingest_url(svc, "cam", token=VIEW))
        assert code == 4403 and "a view token cannot publish" in reason
        async with websockets.connect(_ingest_url(svc, "cam"),
                                      additional_headers={"Authorization": f"Bearer {PUBLISH}"}) as ws:
            assert isinstance(await IngestClient(ws).next(wire.HelloMsg, timeout=10), wire.HelloMsg)
        assert "cam" in svc.pipeline.stream_ids()
    # with no token configured nobody may publish, not even with a made-up token
    async with Service(_config(auth={})) as svc:
        code, reason = await _close_of(_ingest_url(svc, "cam", token=None))
        assert code == 4401 and "none is configured" in reason
        assert "cam" not in svc.pipeline.stream_ids()


async def _healthz_ok(svc: Service, timeout_s: float = 10.0) -> None:
    """/healthz answers 200 within ``timeout_s`` (the event loop is not stuck)."""
    import urllib.request

    def get() -> int:
        request = urllib.request.Request(svc.url("/healthz"), headers={"Authorization": f"Bearer {VIEW}"})
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status

    assert await asyncio.wait_for(asyncio.to_thread(get), timeout_s) == 200


async def test_an_absurd_fps_gets_bad_message_and_the_server_keeps_captioning():
    story = Storyline(seed=3, scene_s=1000.0, aspect=320 / 240)
    good = storyline_jpegs(story, 0.0, 1)[0]
    async with (Service(_config()) as svc,
                WireClient(svc.url("/ws").replace("http://", "ws://", 1) + f"?streams=demo&token={VIEW}") as viewer,
                websockets.connect(_ingest_url(svc, "cam"), max_size=2**22) as ws):
        client = IngestClient(ws)
        await client.next(wire.HelloMsg)
        for fps in ["1e-300", "5e-324", "0.001", "1000", "1" * 5000]:
            await ws.send('{"frames": ["' + b64(good) + '", "' + b64(good) + '"], "fps": ' + fps + "}")
            err = await _expect_error(client, "bad_message")
            assert "fps" in err.detail or "characters" in err.detail, err
            await _healthz_ok(svc)
        await ws.send(json.dumps({"frames": [b64(good)] * 2, "fps": 0.1}))  # the slowest allowed: taken
        assert (await client.next(wire.IngestedMsg, timeout=10)).total == 2
        await _healthz_ok(svc)
        seen = len(viewer.of(wire.CaptionMsg, "demo"))
        await viewer.wait_for(lambda: len(viewer.of(wire.CaptionMsg, "demo")) > seen, TIMEOUT_S, "a demo caption")
        assert svc.pipeline.health()["cam"]["state"] in ("live", "starting")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def test_a_20000_pixel_square_png_is_refused_before_it_is_decoded():
    from tests.helpers.publish import huge_png

    huge = huge_png(20000, 20000)  # 0.4 MB encoded, 1.2 GB decoded as RGB
    assert len(huge) < 1 << 20
    story = Storyline(seed=3, scene_s=1000.0, aspect=320 / 240)
    good = storyline_jpegs(story, 0.0, 1)[0]
    async with Service(_config()) as svc, websockets.connect(_ingest_url(svc, "cam"), max_size=2**22) as ws:
        client = IngestClient(ws)
        await client.next(wire.HelloMsg)
        before_mb = _peak_rss_mb()
        loop = asyncio.get_running_loop()
        for message in (huge, json.dumps({"frames": [b64(good), b64(huge)]})):
            started = loop.time()
            await ws.send(message)
            err = await _expect_error(client, "too_many_pixels")
            assert "20000x20000" in err.detail and "ingest.max_pixels" in err.detail
            assert loop.time() - started < 5.0
        # the server is this process: a decoded 20000x20000 picture would raise the peak by 1.2 GB
        assert _peak_rss_mb() - before_mb < 300, (before_mb, _peak_rss_mb())
        await ws.send(good)
        assert (await client.next(wire.IngestedMsg, timeout=10)).total == 1  # nothing of the batch was taken
        metrics = await asyncio.to_thread(_get, svc.url("/metrics"))
        assert 'streamcap_bad_requests_total{code="too_many_pixels"} 2.0' in metrics
        assert 'streamcap_limit_refusals_total{limit="max_pixels"} 2.0' in metrics


async def test_hostile_json_gets_bad_message_on_ingest_and_on_ws_and_both_stay_open():
    story = Storyline(seed=3, scene_s=1000.0, aspect=320 / 240)
    good = storyline_jpegs(story, 0.0, 1)[0]
    hostile = ['{"frames": ["x"], "fps": ' + "1" * 5000 + "}", "[" * 100_000 + "]" * 100_000,
               '{"frames": ' + "[" * 100_000]
    async with (Service(_config()) as svc,
                WireClient(svc.url("/ws").replace("http://", "ws://", 1) + f"?streams=demo&token={VIEW}") as viewer,
                websockets.connect(_ingest_url(svc, "cam"), max_size=2**22) as ws):
        client = IngestClient(ws)
        await client.next(wire.HelloMsg)
        for text in hostile:
            await ws.send(text)
            await _expect_error(client, "bad_message")
        await ws.send(good)
        assert (await client.next(wire.IngestedMsg, timeout=10)).total == 1
        for text in ['{"type":"ping","v":' + "1" * 5000 + "}", '{"type":"subscribe","streams":' + "[" * 20_000 + "]}"]:
            errors = len(viewer.of(wire.ErrorMsg))
            await viewer.send(text)
            await viewer.wait_for(lambda n=errors: len(viewer.of(wire.ErrorMsg)) > n, 10, "an error")
            assert viewer.of(wire.ErrorMsg)[-1].code == "bad_message"
        await viewer.send(wire.encode_ping())
        await viewer.wait_for(lambda: viewer.of(wire.PongMsg), 10, "a pong")
        assert viewer.closed is None


async def _refused_status(url: str) -> tuple[int, dict]:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, open_timeout=10):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body)


async def test_a_publisher_over_its_stream_limits_is_refused_clearly():
    other = "publish-secret-456"
    cfg = _config(auth={"tokens": [*TOKENS, {"scope": "publish", "token": other}]},
                  max_streams_per_token=2, max_push_streams=3)
    async with Service(cfg) as svc:
        async with (websockets.connect(_ingest_url(svc, "a1")) as a1, websockets.connect(_ingest_url(svc, "a2")) as a2):
            for ws in (a1, a2):
                await IngestClient(ws).next(wire.HelloMsg, timeout=10)
            status, doc = await _refused_status(_ingest_url(svc, "a3"))
            assert status == 429 and doc["error"]["code"] == "too_many_streams"
            assert "ingest.max_streams_per_token" in doc["error"]["detail"]
            # publishing again to a stream it made is no new stream: allowed
            async with websockets.connect(_ingest_url(svc, "a1")) as again:
                await IngestClient(again).next(wire.HelloMsg, timeout=10)
            async with websockets.connect(_ingest_url(svc, "b1", token=other)) as b1:
                await IngestClient(b1).next(wire.HelloMsg, timeout=10)
                status, doc = await _refused_status(_ingest_url(svc, "b2", token=other))
                assert status == 503 and doc["error"]["code"] == "too_many_streams"
                assert "ingest.max_push_streams" in doc["error"]["detail"]
        assert set(svc.pipeline.stream_ids()) == {"demo", "a1", "a2", "b1"}
        metrics = await asyncio.to_thread(_get, svc.url("/metrics"))
        assert 'streamcap_limit_refusals_total{limit="max_streams_per_token"} 1.0' in metrics
        assert 'streamcap_limit_refusals_total{limit="max_push_streams"} 1.0' in metrics
        assert 'streamcap_bad_requests_total{code="too_many_streams"} 2.0' in metrics


async def test_a_push_stream_nobody_publishes_to_expires_and_a_configured_one_does_not():
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": TOKENS}, "ingest": {"idle_expiry_s": 0.5},
        "sources": [{"id": "fixed", "url": "push:"}]})
    story = Storyline(seed=3, scene_s=1000.0, aspect=320 / 240)
    good = storyline_jpegs(story, 0.0, 1)[0]
    async with Service(cfg) as svc:
        async with websockets.connect(_ingest_url(svc, "idle")) as ws:
            client = IngestClient(ws)
            await client.next(wire.HelloMsg, timeout=10)
            await ws.send(good)
            await client.next(wire.IngestedMsg, timeout=10)
            # while a publisher is connected the stream stays, however long: an expiry pass an hour later
            streams, clock = svc.push_streams, svc.push_streams.clock
            streams.clock = lambda: clock() + 3600 * 10**9
            try:
                assert await streams.expire_idle() == []
            finally:
                streams.clock = clock
            assert "idle" in svc.pipeline.stream_ids()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "idle" in svc.pipeline.stream_ids():
            assert loop.time() < deadline, "the idle push stream was not removed within 10 s"
            await asyncio.wait_for(asyncio.shield(_healthz_ok(svc)), 10)  # poll through the server
        assert "fixed" in svc.pipeline.stream_ids()
        metrics = await asyncio.to_thread(_get, svc.url("/metrics"))
        assert 'streamcap_push_streams_removed_total{reason="idle"} 1.0' in metrics
        assert "streamcap_push_streams_created_total 1.0" in metrics
