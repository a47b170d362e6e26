"""``streamcap export`` then ``streamcap run --engine`` as a user runs them: a tiny video-GIT
checkpoint exported (int8) by the CLI captions the live demo stream end to end, with the frame
cache visible in /metrics; bad checkpoints are clear errors."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request

import pytest

from streamcap.outputs.wire import CaptionMsg
from tests.helpers.cli import base_url, start_run
from tests.helpers.tiny_git import WORDS, save_tiny_git
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration


async def _cli(*args: str, timeout: float = 600) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "streamcap.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_exported_checkpoint_runs_live_end_to_end(tmp_path):
    ckpt = save_tiny_git(tmp_path / "ckpt", frames=3)
    engine = tmp_path / "tiny-vatex"
    code, _, err = await _cli("export", str(ckpt), "--out", str(engine), "--precision", "int8")
    assert code == 0, err
    assert "wrote engine folder" in err
    manifest = json.loads((engine / "engine.json").read_text())
    assert manifest["precision"] == "int8" and manifest["frames_per_window"] == 3

    proc = await start_run("--engine", str(engine), "--port", "0")
    try:
        base = await base_url(proc)
        async with WireClient(base.replace("http://", "ws://") + "/ws?streams=demo") as client:
            # K=3 over 2 s windows every 0.5 s: window n+2 reuses two frames of window n; the cache
            # counters are updated before a batch's captions are published
            # (the picture's captions: with the speech models installed the demo also speaks)
            caps = await client.wait_for(lambda: [c for c in client.of(CaptionMsg, "demo")
                                                  if c.text and c.track == "video"][5:],
                                         timeout=90, what="six captions from the exported engine")
        # the tiny model speaks its own vocabulary, not the demo model's
        assert all(set(c.text.split()) <= set(WORDS) for c in caps)
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/metrics", timeout=10).read())
        text = metrics.decode()
        # windows of 2 s every 0.5 s share frames: the cache serves them
        assert _metric(text, "streamcap_frame_cache_total", result="hit") > 0
        assert _metric(text, "streamcap_frame_cache_total", result="miss") > 0
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_export_of_a_folder_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    code, _, err = await _cli("export", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "no config.json" in err


async def test_export_of_an_unsupported_model_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    code, _, err = await _cli("export", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "not supported" in err and "GitForCausalLM" in err and "BlipForConditionalGeneration" in err
