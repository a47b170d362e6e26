"""The overlay's roll-up mode in headless Chromium against the real service: finals enter at the
bottom and roll up, every line is wrapped to the configured width and holds only text the server
published. A screenshot is kept as an artefact."""

from __future__ import annotations

import pytest

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient
from tools.browser import Chromium, find_chromium

pytestmark = pytest.mark.integration

LINES = "Array.from(document.querySelectorAll('#captions .line:not(.partial)'), e => e.textContent.trim())"


async def test_rollup_overlay_wraps_and_rolls_published_finals(require_system, artefact_dir):
    if find_chromium() is None:
        require_system("chromium is not installed (Debian package: chromium)")
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}})
    async with Service(cfg) as svc, Chromium(1280, 720) as browser, \
            WireClient(svc.server.ws_url("/ws?streams=demo")) as viewer:
        page = await browser.new_page(svc.url("/overlay?stream=demo&mode=rollup&lines=3&chars=24&hold=60"))
        # finals wrapped at 24 characters fill the three lines
        rows = await page.wait_for(f"(() => {{ const l = {LINES}; return l.length >= 3 ? l : null; }})()", 60)
        await page.screenshot(artefact_dir / "overlay-rollup.png")
        assert len(rows) <= 3 and all(len(r) <= 24 or " " not in r for r in rows), rows
        finals = [m.text for m in viewer.of(wire.CaptionMsg, "demo") if m.state.value == "final"]
        words_shown = " ".join(rows).split()
        words_published = " ".join(finals).split()
        # the lines on screen are the tail of the published finals' words, in order
        assert words_shown == words_published[-len(words_shown):], (rows, finals)
        assert await page.evaluate("document.body.classList.contains('rollup')")
