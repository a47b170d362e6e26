"""The overlay in headless Chromium resumes by seq: when its connection drops it reconnects with
`since=` the last caption it had, gets only what came after it, and keeps what it shows."""

from __future__ import annotations

import asyncio

import pytest

from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.server.hub import DisconnectReason
from tools.browser import Chromium, find_chromium

pytestmark = pytest.mark.integration

SHOWN = "Array.from(document.querySelectorAll('#captions .line'), e => e.textContent.trim()).join(' | ')"
FINALS = "document.querySelectorAll('#captions .line:not(.partial)').length"


async def test_a_dropped_overlay_reconnects_with_since_and_keeps_its_captions(require_system, tmp_path):
    if find_chromium() is None:
        require_system("chromium is not installed (Debian package: chromium)")
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0, "data_dir": str(tmp_path)},
        "sources": [{"id": "cam", "url": "synthetic:shapes?seed=2&fps=10&size=320x240&scene_s=2"}]})
    async with Service(cfg) as svc, Chromium(1280, 720) as browser:
        connects: list[dict] = []
        second = asyncio.Event()
        add_client = svc.hub.add_client

        def spy(streams=None, since=None, **more):  # every websocket the overlay opens, with its since
            connects.append(dict(since or {}))
            if len(connects) >= 2:
                second.set()
            return add_client(streams, since=since, **more)

        svc.hub.add_client = spy
        page = await browser.new_page(svc.url("/overlay?stream=cam"))
        await page.wait_for(f"(() => {FINALS} > 0 || null)()", 60)  # a final on screen
        before = await page.evaluate(SHOWN)
        assert connects == [{}]  # the first connection asks for nothing: the recent finals
        seen = max(c.seq for c in svc.hub.recent_finals("cam"))
        svc.hub.close_all(DisconnectReason.SERVER_SHUTDOWN)  # its connection drops
        await asyncio.wait_for(second.wait(), 30)
        # it asked for what came after the last caption it had (that final, or a partial after it)
        assert set(connects[1]) == {"cam"} and connects[1]["cam"] >= seen, (connects, seen)
        after = await page.evaluate(SHOWN)
        assert before and after  # what it showed stayed on screen through the reconnect
