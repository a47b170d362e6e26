#!/usr/bin/env python
"""Render the operator dashboard with two live streams into a PNG (the README's picture).

Starts the real service on two synthetic streams (the demo stream and a second one with another
seed), opens the real ``/dashboard`` page in headless Chromium and takes a screenshot once both
streams are live and each shows at least ``--finals`` final captions. Nothing is staged: the
alert panel stays empty because the server emits no alerts yet.

Usage: python tools/screenshot_dashboard.py [-o docs/img/dashboard.png] [--finals 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.runtime.config import DEMO_SOURCE_URL, load_config
from streamcap.runtime.service import Service
from tools.browser import Chromium

STREAMS = {"demo": DEMO_SOURCE_URL, "lobby": "synthetic:shapes?seed=4&fps=10&size=320x240&scene_s=6"}


def _ready_js(finals: int) -> str:
    """JS: truthy once every stream card is live and lists at least ``finals`` finals."""
    ids = json.dumps(list(STREAMS))
    return (f"{ids}.every((id) => {{ const c = document.querySelector(`[data-stream=\"${{id}}\"]`);"
            " return c && c.dataset.state === 'live'"
            f" && c.querySelectorAll('.finals li').length >= {finals}; }})")


async def main(out: Path, width: int, height: int, finals: int) -> int:
    sources = [{"id": sid, "url": url} for sid, url in STREAMS.items()]
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "sources": sources})
    async with Service(cfg) as svc, Chromium(width, height) as browser:
        page = await browser.new_page(svc.url("/dashboard"))
        # scenes last 6 s: a few finals per stream take about 6 s each
        await page.wait_for(_ready_js(finals), timeout=15 + 8 * finals)
        await page.screenshot(out)
        shown = await page.evaluate(
            "[...document.querySelectorAll('[data-stream]')].map((c) =>"
            " c.dataset.stream + ': ' + c.querySelector('.final').textContent)")
    print(f"wrote {out} (showing: {shown})")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--finals", type=int, default=3, help="finals each stream shows before the picture")
    a = ap.parse_args()
    raise SystemExit(asyncio.run(main(a.out, a.width, a.height, a.finals)))
