"""Chapters of a long video, for real: ``streamcap caption --chapters`` on a rendered storyline
(one chapter per scene, titled with the scene's ground truth), and ``GET /v1/streams/{id}/chapters``
on a stream of the running service (with ``since``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import aiohttp
import pytest
import webvtt

from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.demo.synthetic import Storyline
from tests.helpers.wsclient import WireClient
from tools import media

pytestmark = pytest.mark.integration

SCENE_S = 6.0
DURATION_S = 30.0
#: storyline (shapes) clips are captioned by the caption model, not the scene describer
SHAPES = ["--video-engine", "caption"]


async def test_caption_chapters_gives_a_chapter_per_scene(tmp_path, require_system):
    path = tmp_path / "story.mp4"
    try:
        story = media.render_storyline_file(path, seed=31, duration_s=DURATION_S, scene_s=SCENE_S)
    except media.MediaToolError as exc:
        require_system(f"cannot render a storyline: {exc}")
    out = tmp_path / "chapters.jsonl"
    proc = subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", str(path), "--chapters",
                           "-o", str(out), "--no-progress", *SHAPES], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chapters = [json.loads(line) for line in out.read_text().splitlines()]
    truth = [story.caption_at(i * SCENE_S) for i in range(int(DURATION_S / SCENE_S))]
    assert [c["title"] for c in chapters] == truth, (chapters, truth)
    for i, c in enumerate(chapters):  # each starts near its scene's cut (a final needs 3 windows)
        assert i * SCENE_S - 0.01 <= c["start"] <= i * SCENE_S + 2.6, c
    # the last window ends by the last frame (29.9 s), on the caption model's frame grid (0.4 s
    # steps, at or before its nominal end 29.5 s): within a stride and a grid step of the end
    assert DURATION_S - 0.9 <= chapters[-1]["end"] <= DURATION_S
    assert "wrote 5 chapter(s)" in proc.stderr
    vtt = tmp_path / "chapters.vtt"
    proc = subprocess.run([sys.executable, "-m", "streamcap.cli", "caption", str(path), "--chapters",
                           "-o", str(vtt), "--no-progress", *SHAPES], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cues = webvtt.from_buffer(io.StringIO(vtt.read_text())).captions
    assert [" ".join(c.text.split()) for c in cues] == truth  # one cue per chapter, however long


async def test_the_chapters_endpoint_follows_a_stream():
    url = f"synthetic:shapes?seed=8&fps=10&size=320x240&scene_s={SCENE_S:g}&realtime=false&duration_s={DURATION_S:g}"
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "engine": {"max_batch": 1},
                                                   "sources": [{"id": "tape", "url": url}]})
    story = Storyline(8, SCENE_S, aspect=320 / 240)
    async with Service(cfg) as svc, aiohttp.ClientSession() as http:
        async with WireClient(svc.server.ws_url("/ws?streams=tape")) as viewer:
            await viewer.wait_for(lambda: svc.pipeline.health()["tape"]["state"] == "ended", 120, "the tape to end")
        async with http.get(svc.url("/v1/streams/tape/chapters")) as r:
            assert r.status == 200
            doc = await r.json()
        titles = [c["title"] for c in doc["chapters"]]
        assert titles == [story.caption_at(i * SCENE_S) for i in range(5)], titles
        async with http.get(svc.url("/v1/streams/tape/chapters?since=20")) as r:
            later = (await r.json())["chapters"]
        assert [c["title"] for c in later] == titles[3:] and all(c["end"] > 20 for c in later)
        async with http.get(svc.url("/v1/streams/tape/chapters?since=-1")) as r:
            assert r.status == 400
        async with http.get(svc.url("/v1/streams/nope/chapters")) as r:
            assert r.status == 404
