"""``streamcap run`` as a user runs it: prints its URLs, serves captions of the demo stream, stops
cleanly on Ctrl+C; a busy port is a clear error."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from streamcap.outputs.wire import CaptionMsg
from tests.helpers.cli import base_url, start_run, stop_run
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


async def test_the_demo_speaks_and_its_words_are_captioned_beside_the_picture():
    """With the speech models and the narration installed (tools/setup.sh with the export extra),
    ``streamcap run`` with no arguments captions the demo's narration as well as its picture."""
    import json

    from streamcap.runtime.config import Config
    from streamcap.runtime.speechmodels import DEMO_NARRATION
    from tests.conftest import unavailable
    from tools.wer import normalize

    if not Config().speech.installed() or not DEMO_NARRATION.is_file():
        unavailable("the speech models or the demo narration are not installed (tools/setup.sh cpu,export)")
    narration = json.loads(DEMO_NARRATION.with_name("manifest.json").read_text())["lines"]
    said = set(normalize(" ".join(line["text"] for line in narration)).split())
    proc = await start_run("--port", "0")
    try:
        base = await base_url(proc)
        async with WireClient(base.replace("http://", "ws://") + "/ws?streams=demo") as client:
            def heard():
                speech = [m for m in client.of(CaptionMsg, "demo") if m.track == "speech" and m.state == "final"]
                words = normalize(" ".join(m.text for m in speech)).split()
                return words if len(words) >= 15 else None

            words = await client.wait_for(heard, timeout=90, what="15 words of the demo's narration")
            pictures = [m for m in client.of(CaptionMsg, "demo") if m.track == "video"]
        assert pictures  # the picture is captioned beside the speech
        assert sum(w in said for w in words) >= 0.8 * len(words), words  # the words are the narration's
    finally:
        await stop_run(proc)
