"""RTSP sources against a real GStreamer RTSP server on loopback: frames, kill/restart, SIGSTOP;
and against a camera that accepts TCP and never answers: closing never waits for FFmpeg.

Measured figures are printed (run with ``-s`` to see them)."""

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from streamcap.sources import open_source
from streamcap.core.types import StreamState
from tests.helpers import FrameCollector, StatusLog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

S = StreamState


def assert_strictly_increasing(values, what):
    values = np.asarray(values)
    assert np.all(np.diff(values) > 0), f"{what} not strictly increasing: {values.tolist()}"


async def test_rtsp_source_delivers_vtest_frames_on_the_10fps_media_clock(rtsp_server,
                                                                         vtest_long_path):
    server = rtsp_server({"vtest": vtest_long_path})
    statuses = StatusLog()
    started = time.monotonic()
    source = open_source("cam", server.url("vtest"), on_status=statuses)
    collector = FrameCollector(source).start()
    try:
        await collector.wait_for_count(41, timeout_s=20)
    finally:
        await collector.aclose()
    frames = collector.frames[:41]
    first_frame_s = collector.arrivals[0] - started
    print(f"\nRTSP open → first frame: {first_frame_s:.3f} s")

    assert statuses.states[:2] == [S.STARTING, S.LIVE]
    assert frames[0].image.shape == (576, 768, 3) and frames[0].image.dtype == np.uint8
    seqs = [f.seq for f in frames]
    assert_strictly_increasing(seqs, "seq")
    pts = np.array([f.pts_s for f in frames])
    assert_strictly_increasing(pts, "pts")
    steps = np.diff(pts) / np.diff(seqs)  # per frame, whatever the consumer may have missed
    assert np.median(steps) == pytest.approx(0.1, abs=0.005)
    assert pts[-1] - pts[0] == pytest.approx(0.1 * (seqs[-1] - seqs[0]), abs=0.05)
    # live: the 4 s of media arrive over about 4 s of real time
    capture_span_s = (frames[-1].capture_ns - frames[0].capture_ns) / 1e9
    assert capture_span_s == pytest.approx(pts[-1] - pts[0], abs=1.0)
    assert first_frame_s < 5.0


async def test_killed_rtsp_server_gives_reconnecting_within_3s_and_live_within_5s_of_restart(
        rtsp_server, vtest_long_path):
    server = rtsp_server({"vtest": vtest_long_path})
    statuses = StatusLog()
    reconnects: list[None] = []
    source = open_source("cam", server.url("vtest"), on_status=statuses,
                         on_reconnect=lambda: reconnects.append(None))
    collector = FrameCollector(source).start()
    try:
        await statuses.wait_for(S.LIVE, timeout_s=15)
        await collector.wait_for_count(10, timeout_s=10)

        mark = statuses.mark()
        killed_at = time.monotonic()
        server.kill()
        detected_at, status = await statuses.wait_for(S.STALLED, S.RECONNECTING, since=mark,
                                                      timeout_s=10)
        detect_s = detected_at - killed_at
        assert status.code == "source_error"

        mark = statuses.mark()
        restart_called_at = time.monotonic()
        await asyncio.to_thread(server.restart)
        ready_at = time.monotonic()
        live_at, _ = await statuses.wait_for(S.LIVE, since=mark, timeout_s=15)
        before = len(collector.frames)
        await collector.wait_for_count(before + 10, timeout_s=10)
    finally:
        await collector.aclose()
    live_s = live_at - ready_at
    print(f"\nkill → {status.state.value}: {detect_s:.3f} s; server restart took "
          f"{ready_at - restart_called_at:.3f} s; server ready → live: {live_s:.3f} s")
    assert detect_s <= 3.0
    assert live_s <= 5.0
    assert reconnects, "on_reconnect was not called"
    assert_strictly_increasing([f.seq for f in collector.frames], "seq across the reconnect")
    assert_strictly_increasing([f.pts_s for f in collector.frames], "pts across the reconnect")


async def test_frozen_rtsp_server_is_detected_as_stalled_within_3s(rtsp_server, vtest_long_path):
    server = rtsp_server({"vtest": vtest_long_path})
    statuses = StatusLog()
    source = open_source("cam", server.url("vtest"), on_status=statuses)
    collector = FrameCollector(source).start()
    try:
        await statuses.wait_for(S.LIVE, timeout_s=15)
        await collector.wait_for_count(10, timeout_s=10)

        mark = statuses.mark()
        paused_at = time.monotonic()
        server.pause()  # SIGSTOP: the connection stays open, nothing is sent
        stalled_at, stalled = await statuses.wait_for(S.STALLED, since=mark, timeout_s=10)
        await statuses.wait_for(S.RECONNECTING, since=mark, timeout_s=5)

        mark = statuses.mark()
        resumed_at = time.monotonic()
        server.resume()
        live_at, _ = await statuses.wait_for(S.LIVE, since=mark, timeout_s=15)
        before = len(collector.frames)
        await collector.wait_for_count(before + 5, timeout_s=10)
    finally:
        await collector.aclose()
    detect_s = stalled_at - paused_at
    print(f"\nSIGSTOP → stalled: {detect_s:.3f} s; SIGCONT → live: {live_at - resumed_at:.3f} s")
    assert detect_s <= 3.0
    assert "no frame" in stalled.detail
    assert_strictly_increasing([f.seq for f in collector.frames], "seq across the stall")
    assert_strictly_increasing([f.pts_s for f in collector.frames], "pts across the stall")


async def test_unreachable_url_reports_sanitised_status_while_another_source_keeps_going(
        rtsp_server, vtest_long_path, caplog):
    server = rtsp_server({"vtest": vtest_long_path})
    good_statuses, bad_statuses = StatusLog(), StatusLog()
    good = FrameCollector(open_source("good", server.url("vtest"), on_status=good_statuses))
    bad = FrameCollector(open_source("bad", "rtsp://admin:hunter2@127.0.0.1:1/nothing",
                                     on_status=bad_statuses))
    with caplog.at_level(logging.DEBUG):
        good.start()
        bad.start()
        try:
            await good_statuses.wait_for(S.LIVE, timeout_s=15)
            _, status = await bad_statuses.wait_for(S.RECONNECTING, S.ERROR, timeout_s=10)
            before = len(good.frames)
            await good.wait_for_count(before + 20, timeout_s=10)  # unaffected meanwhile
        finally:
            await good.aclose()
            await bad.aclose()
    assert "127.0.0.1:1/nothing" in status.detail
    assert "hunter2" not in status.detail and "admin" not in status.detail
    assert status.code == "source_error"
    assert not bad.frames
    assert "hunter2" not in caplog.text
    assert any(r.levelno >= logging.WARNING and "bad" in r.getMessage()
               and "127.0.0.1:1" in r.getMessage() for r in caplog.records)
    assert S.STALLED not in good_statuses.states and S.RECONNECTING not in good_statuses.states


class _SilentServer:
    """Accepts TCP connections and never answers (a hung camera); ``connected`` is set on the
    first connection."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "_SilentServer":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, _reader, writer) -> None:
        self._writers.append(writer)
        self.connected.set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"rtsp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hung"

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        assert self.server is not None
        self.server.close()


def _reader_threads(stream: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"streamcap-source-{stream}-")]


async def test_closing_a_source_hung_in_open_stops_its_reader_at_once():
    async with _SilentServer() as camera:
        source = open_source("hungclose", camera.url, open_timeout_s=60.0, read_timeout_s=60.0)
        collector = FrameCollector(source).start()
        await asyncio.wait_for(camera.connected.wait(), 10)
        assert _reader_threads("hungclose")  # inside FFmpeg's open, which would wait 60 s
        t0 = time.monotonic()
        await collector.aclose()
        took_s = time.monotonic() - t0
    print(f"\naclose of a source hung in open: {took_s:.3f} s")
    assert took_s < 1.0
    assert not [t for t in _reader_threads("hungclose") if t.is_alive()]


async def test_readers_nobody_closed_are_stopped_by_the_exit_hook():
    from streamcap.sources.reader import stop_readers_at_exit

    async with _SilentServer() as camera:
        source = open_source("hungexit", camera.url, open_timeout_s=60.0, read_timeout_s=60.0)
        collector = FrameCollector(source).start()
        try:
            await asyncio.wait_for(camera.connected.wait(), 10)
            t0 = time.monotonic()
            left = await asyncio.to_thread(stop_readers_at_exit, 5.0)
            took_s = time.monotonic() - t0
        finally:
            await collector.aclose()
    assert left == 0 and took_s < 1.0
