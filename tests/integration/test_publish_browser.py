"""The browser publisher, for real: headless Chromium opens ``/publish`` with a fake camera that
plays a rendered storyline (a .y4m file), publishes it over WHIP (WebRTC) to the real service,
and the page shows the stream's captions, which match the storyline's ground truth. Also the
overlay, rendered while captions flow. Screenshots are kept as test artefacts."""

from __future__ import annotations

import subprocess

import pytest
import pytest_asyncio

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient
from tools.browser import Chromium, find_chromium

pytestmark = pytest.mark.integration

PUBLISH = "publish-secret-123"
CLIP_S = 18.0
TIMEOUT_S = 120.0


@pytest.fixture
def chromium(require_system) -> str:
    exe = find_chromium()
    if exe is None:
        require_system("chromium is not installed (Debian package: chromium)")
    return exe


@pytest.fixture
def fake_camera(storyline_video, tmp_path, require_system):
    """The storyline's first 18 s (three scenes) as a .y4m file for Chromium's fake camera."""
    out = tmp_path / "camera.y4m"
    try:
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(storyline_video.path), "-t", str(CLIP_S),
                        "-pix_fmt", "yuv420p", "-y", str(out)], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.CalledProcessError) as exc:
        require_system(f"ffmpeg could not make the fake camera file: {exc}")
    return out, storyline_video.storyline


@pytest_asyncio.fixture
async def svc():
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": [{"scope": "publish", "token": PUBLISH}]},
        "webrtc": {"loopback_candidates": True},
        # the fake camera plays a storyline (shapes): the caption model, not the scene describer
        "pipeline": {"video_engine": "caption"}})
    async with Service(cfg) as service:
        yield service


async def test_publish_page_sends_the_camera_over_whip_and_shows_its_captions(chromium, fake_camera, svc,
                                                                            artefact_dir):
    camera, story = fake_camera
    truths = {story.caption_at(t) for t in (0.0, 6.0, 12.0)}
    flags = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-video-capture={camera}", "--allow-loopback-in-peer-connection",
             "--disable-features=WebRtcHideLocalIpsWithMdns"]
    ws = svc.url(f"/ws?streams=cam&token={PUBLISH}").replace("http://", "ws://", 1)
    async with Chromium(1280, 720, extra_flags=flags) as browser, WireClient(ws) as viewer:
        page = await browser.new_page(svc.url(f"/publish?stream=cam&token={PUBLISH}&autostart=1"))
        state = await page.wait_for(
            "(() => { const el = document.getElementById('state'); const s = el ? el.textContent : '';"
            " return s.startsWith('publishing') || s.startsWith('could not') ? s : ''; })()", TIMEOUT_S)
        assert state == "publishing to cam", state
        shown = await page.wait_for(
            "(() => { const li = document.querySelectorAll('#finals li');"
            " return li.length ? Array.from(li, e => e.lastChild.textContent) : null; })()", TIMEOUT_S)
        await page.screenshot(artefact_dir / "publish.png")
        # the page shows what the server published for the stream, and it is the storyline's truth
        finals = {m.text for m in viewer.of(wire.CaptionMsg, "cam") if m.state.value == "final"}
        assert set(shown) <= finals, (shown, finals)
        assert set(shown) & truths, (shown, truths)
        health = svc.pipeline.health()["cam"]
        assert health["state"] == "live" and health["url"] == "push:"

        # the overlay, rendered while captions flow
        overlay = await browser.new_page(svc.url(f"/overlay?stream=cam&token={PUBLISH}&size=40"))
        text = await overlay.wait_for(
            "(() => { const c = document.getElementById('captions'); return c && c.innerText.trim(); })()", 60)
        published = {m.text for m in viewer.of(wire.CaptionMsg, "cam")}
        assert any(line.strip() in published for line in text.splitlines()), (text, published)
        await overlay.screenshot(artefact_dir / "overlay.png")
        assert (artefact_dir / "overlay.png").stat().st_size > 1000

        # Stop ends the WHIP session: the stream shows its publisher left
        await page.evaluate("document.getElementById('stop').click()")
        await viewer.wait_for(lambda: svc.pipeline.health()["cam"]["state"] == "stalled", 30,
                              "the stream to stall once the publisher stopped")
        assert not svc.server.extensions[1].sessions
