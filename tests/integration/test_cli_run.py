"""``streamcap run`` as a user runs it: prints its URLs, serves captions of the demo stream, stops
cleanly on Ctrl+C; a busy port is a clear error."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from streamcap.outputs.wire import CaptionMsg
from tests.helpers.cli import base_url, start_run
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration


async def test_run_with_no_arguments_serves_the_demo_stream_and_stops_on_sigint():
    proc = await start_run("--port", "0")
    try:
        base = await base_url(proc)
        async with WireClient(base.replace("http://", "ws://") + "/ws?streams=demo") as client:
            caps = await client.wait_for(lambda: client.of(CaptionMsg, "demo"), timeout=30,
                                         what="a demo caption")
        assert caps[0].text
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_on_a_busy_port_fails_with_a_clear_message():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await start_run("--port", str(port))
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()


async def test_unknown_config_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[engine]\nthreadz = 2\n")
    proc = await start_run("--config", str(cfg))
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "engine.threadz: unknown key" in err.decode()
