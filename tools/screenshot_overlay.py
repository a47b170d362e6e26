#!/usr/bin/env python
"""Render the live subtitle overlay over the demo stream into a PNG (the README's picture).

Starts the real service on the synthetic demo stream, waits for a final caption, then opens the
real ``/overlay`` page in headless Chromium on top of the demo frame of that moment and takes a
screenshot once the overlay shows the caption.

Usage: python tools/screenshot_overlay.py [-o docs/img/overlay.png]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.runtime.config import load_config  # noqa: E402
from streamcap.runtime.service import Service  # noqa: E402
from tools.browser import Chromium  # noqa: E402


async def main(out: Path, width: int, height: int) -> int:
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}})
    async with Service(cfg) as svc:
        assert svc.pipeline is not None
        async with Chromium(width, height) as browser:
            # wait for a final, so the picture shows a settled caption
            while True:
                finals = [c for c in svc.hub.recent_finals("demo")]
                if finals:
                    break
                await asyncio.sleep(0.2)  # a tool, not a test: polls the hub with the run's own pace
            media_s = svc.pipeline.health()["demo"]["media_s"]
            story = svc.pipeline.runners["demo"].source.storyline  # the demo source's own ground truth
            frame = story.render(media_s, width, height)
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            data_uri = "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()
            page = await browser.new_page(svc.overlay_url("demo") + "&size=40")
            text = await page.wait_for(
                "(() => { const c = document.getElementById('captions');"
                " return c && c.innerText.trim(); })()", timeout=20)
            # the overlay is transparent: put the stream's frame of that moment behind it
            await page.evaluate(f"document.documentElement.style.background = 'url({data_uri}) center / cover no-repeat fixed'")
            await page.screenshot(out)
    print(f"wrote {out} (overlay showing: {text!r})")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "img" / "overlay.png")
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=540)
    a = ap.parse_args()
    raise SystemExit(asyncio.run(main(a.out, a.width, a.height)))
