"""Hung cameras must not delay a healthy one (defect 3) and a server with RTSP sources stops cleanly
(defect 10): four "cameras" that accept TCP and never answer, next to a healthy camera on the
real loopback GStreamer RTSP server, in the real service.

Measured figures are printed (run with ``-s`` to see them)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from contextlib import AsyncExitStack

import aiohttp
import pytest

from streamcap.core.types import StreamState
from streamcap.outputs.wire import StatusMsg
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient
from tools import media

pytestmark = pytest.mark.integration

HUNG = 4
RESTARTS = 3
TOKEN = "hung-cameras-publish-token-42"
SECRET = "hunter2-camera-password"


class HungCamera:
    """A TCP listener that accepts connections and never says a word (a camera whose RTSP server
    hangs). It keeps every connection open until closed."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> HungCamera:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def url(self, name: str) -> str:
        return f"rtsp://admin:{SECRET}@127.0.0.1:{self.port}/{name}"

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()


def _tasks() -> int:
    """Native threads of this process (FFmpeg's and onnxruntime's too)."""
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory, require_system):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    try:
        media.render_storyline_file(path, seed=21, duration_s=8.0, scene_s=4.0)
    except media.MediaToolError as exc:
        require_system(f"cannot render a clip: {exc}")
    return path


async def _upload(http: aiohttp.ClientSession, svc: Service, clip) -> float:
    form = aiohttp.FormData()
    form.add_field("video", clip.read_bytes(), filename="clip.mp4", content_type="video/mp4")
    t0 = time.monotonic()
    async with http.post(svc.url("/v1/captions"), data=form) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    assert doc["captions"]
    return time.monotonic() - t0


def _states(client: WireClient, stream: str, since: int = 0) -> list[tuple[float, StreamState]]:
    return [(t, m.state) for t, m in client.timed(StatusMsg, stream)[since:]]


@pytest.mark.timeout(240)
async def test_a_healthy_camera_restarted_next_to_four_hung_ones_is_live_within_5s_and_uploads_keep_their_time(
        rtsp_server, vtest_long_path, clip):
    healthy = rtsp_server({"cam": vtest_long_path})
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": [{"scope": "publish", "token": TOKEN}]},
        "sources": [{"id": "healthy", "url": healthy.url("cam")}]})
    async with AsyncExitStack() as stack:
        svc = await stack.enter_async_context(Service(cfg))
        http = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120), headers={"Authorization": f"Bearer {TOKEN}"}))
        ws_url = svc.url("/ws").replace("http://", "ws://") + f"?token={TOKEN}"
        client = await stack.enter_async_context(WireClient(ws_url))
        await client.wait_for(lambda: any(s is StreamState.LIVE for _, s in _states(client, "healthy")),
                              timeout=30, what="the healthy camera live")
        baseline_s = await _upload(http, svc, clip)  # no hung camera yet

        hung = [await HungCamera().start() for _ in range(HUNG)]
        stack.push_async_callback(lambda: asyncio.gather(*(h.close() for h in hung)))
        assert svc.pipeline is not None
        for i, h in enumerate(hung):
            svc.pipeline.add_stream(f"hung{i}", h.url(f"cam{i}"))
        await client.wait_for(
            lambda: all(any(s is StreamState.RECONNECTING for _, s in _states(client, f"hung{i}"))
                        for i in range(HUNG)),
            timeout=30, what="every hung camera reconnecting (its open timed out)")
        live_after_s, upload_s = [], []
        for restart in range(RESTARTS):
            mark = len(client.timed(StatusMsg, "healthy"))
            await asyncio.to_thread(healthy.kill)
            await client.wait_for(
                lambda: any(s in (StreamState.STALLED, StreamState.RECONNECTING)
                            for _, s in _states(client, "healthy", mark)),
                timeout=15, what="the healthy camera noticing its server went away")
            upload = asyncio.create_task(_upload(http, svc, clip)) if restart == 0 else None
            await asyncio.to_thread(healthy.start)
            ready_at = time.monotonic()
            live = await client.wait_for(
                lambda: [t for t, s in _states(client, "healthy", mark) if s is StreamState.LIVE],
                timeout=30, what=f"the healthy camera live again after restart {restart + 1}")
            live_after_s.append(live[0] - ready_at)
            if upload is not None:
                upload_s.append(await upload)

        # threads over several more reconnect cycles of every hung camera: no growth per attempt
        threads, tasks = [threading.active_count()], [_tasks()]
        attempts_start = [h.connections for h in hung]
        for cycle in range(1, 4):
            await client.wait_for(lambda: min(h.connections - a for h, a in zip(hung, attempts_start)) >= cycle,
                                  timeout=30, what=f"reconnect cycle {cycle} of every hung camera")
            threads.append(threading.active_count())
            tasks.append(_tasks())
        attempts = [h.connections for h in hung]

        print(f"\nhealthy camera: server ready -> live {['%.2f' % s for s in live_after_s]} s with {HUNG} hung "
              f"cameras; upload {baseline_s:.2f} s alone, {upload_s[0]:.2f} s during a restart with hung cameras; "
              f"over 3 more reconnect cycles: Python threads {threads}, native threads {tasks}; connections "
              f"to each hung camera in all {attempts}")
        assert max(live_after_s) <= 5.0
        assert upload_s[0] <= 2 * baseline_s + 5.0
        # at most one reader per hung camera at a time (an abandoned one leaves at once)
        assert max(threads) - min(threads) <= HUNG, threads
        assert threads[-1] <= threads[0] + HUNG and tasks[-1] <= tasks[0] + 2 * HUNG, (threads, tasks)
        statuses = [m for m in client.of(StatusMsg) if m.stream.startswith("hung")]
        assert statuses and all(SECRET not in m.detail for m in statuses)
        assert any("timed out" in m.detail for m in statuses)


async def _stop_run_with_sigterm(healthy_url: str, hung_url: str) -> tuple[int, float, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamcap.cli", "run", "--port", "0", "--source", f"cam={healthy_url}",
        "--source", f"hung={hung_url}", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash prints every thread's stack
    log = b""
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            while b"stream cam: live" not in log or b"stream hung: reconnecting" not in log:
                line = await proc.stderr.readline()
                assert line, f"streamcap run exited early: {log.decode(errors='replace')[-2000:]}"
                log += line
        # the hung camera's reader is inside FFmpeg (opening) and the healthy one is decoding
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        log += rest or b""
        return proc.returncode, time.monotonic() - t0, log.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(240)
async def test_streamcap_run_with_rtsp_sources_exits_0_on_sigterm_every_time(rtsp_server, vtest_long_path):
    healthy = rtsp_server({"cam": vtest_long_path})
    hung = await HungCamera().start()
    try:
        runs = [await _stop_run_with_sigterm(healthy.url("cam"), hung.url("cam")) for _ in range(3)]
    finally:
        await hung.close()
    print(f"\nstreamcap run stopped by SIGTERM: exit codes {[rc for rc, _, _ in runs]}, "
          f"stop took {['%.2f' % s for _, s, _ in runs]} s")
    for rc, took_s, log in runs:
        assert rc == 0, log[-3000:]  # never -6 (SIGABRT: "FATAL: exception not rethrown")
        assert "FATAL" not in log and "Traceback" not in log
        assert took_s < 10
        assert SECRET not in log
