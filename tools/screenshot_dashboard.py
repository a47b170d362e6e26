#!/usr/bin/env python
"""Render the operator dashboard into a PNG (the README's picture), from a real ``streamcap run``.

Starts ``streamcap run`` (a subprocess, on a free loopback port) on the given sources, opens the
real ``/dashboard`` page in headless Chromium (``tools.browser``) and takes a screenshot once every
stream card shows at least ``--finals`` final captions and a loaded snapshot picture (the
``/v1/streams/{id}/snapshot.jpg?boxes=1`` the page fetches). Nothing is staged.

Sources: by default the demo stream and a second synthetic one (another seed). ``--source`` (repeatable)
replaces them: ``ID=URL`` or a plain file path / URL (its id: the file's stem). A file is read as
fast as it decodes (files are not paced), so its card may already say ``ended``: the picture is its
last frame with the last window's boxes. Anything after ``--`` goes to ``streamcap run`` as is
(e.g. ``-- --config describer.toml``).

Usage:
  python tools/screenshot_dashboard.py [-o docs/img/dashboard.png] [--finals 3]
  python tools/screenshot_dashboard.py --source ~/vtest.avi --engine engines/scene-describer -o docs/img/dashboard-vtest.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.runtime.config import DEMO_SOURCE_URL
from tools.browser import Chromium

DEFAULT_SOURCES = {"demo": DEMO_SOURCE_URL, "lobby": "synthetic:shapes?seed=4&fps=10&size=320x240&scene_s=6"}
SERVING = re.compile(r"streamcap serving on (http://127\.0\.0\.1:\d+)/")
START_S = 120.0  # loading an engine (and the speech models, when installed) on a busy machine


def parse_sources(given: list[str]) -> dict[str, str]:
    """``ID=URL`` or a bare path/URL (id: the file's stem, cleaned) → {id: url}."""
    if not given:
        return dict(DEFAULT_SOURCES)
    out: dict[str, str] = {}
    for item in given:
        sid, sep, url = item.partition("=")
        if not sep or "/" in sid or ":" in sid:  # a path or URL, not ID=URL
            sid = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(item.split("?")[0]).stem)[:64] or "stream"
            url = str(Path(item).expanduser().resolve()) if Path(item).expanduser().exists() else item
        out[sid] = url
    return out


def _ready_js(ids: list[str], finals: int) -> str:
    """JS: truthy once every card lists at least ``finals`` finals and shows a loaded snapshot."""
    return (f"{json.dumps(ids)}.every((id) => {{ const c = document.querySelector(`[data-stream=\"${{id}}\"]`);"
            " const img = c && c.querySelector('img.snapshot');"
            f" return c && c.querySelectorAll('.finals li').length >= {finals}"
            " && img && img.complete && img.naturalWidth > 0; })")


async def _serving_url(proc: asyncio.subprocess.Process, log: list[str]) -> str:
    """The server's base URL, read from ``streamcap run``'s log (stderr) as it starts."""
    assert proc.stderr is not None
    deadline = time.monotonic() + START_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"streamcap run did not start serving within {START_S:g} s")
        line = await asyncio.wait_for(proc.stderr.readline(), left)
        if not line:
            raise RuntimeError(f"streamcap run exited with code {await proc.wait()}:\n" + "".join(log[-20:]))
        text = line.decode(errors="replace")
        log.append(text)
        match = SERVING.search(text)
        if match:
            return match.group(1)


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))


async def main(out: Path, sources: dict[str, str], engine: str | None, run_args: list[str], width: int,
               height: int, finals: int, timeout_s: float) -> int:
    cmd = [sys.executable, "-m", "streamcap.cli", "run", "--host", "127.0.0.1", "--port", "0"]
    for sid, url in sources.items():
        cmd += ["--source", f"{sid}={url}"]
    if engine:
        cmd += ["--engine", engine]
    cmd += run_args
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    log: list[str] = []
    drain = None
    try:
        base = await _serving_url(proc, log)
        assert proc.stderr is not None
        drain = asyncio.create_task(_drain(proc.stderr, log))  # keep reading: a full pipe would stall it
        async with Chromium(width, height) as browser:
            page = await browser.new_page(f"{base}/dashboard")
            try:
                await page.wait_for(_ready_js(list(sources), finals), timeout=timeout_s)
            except Exception:
                print("streamcap run's log:\n" + "".join(log[-30:]), file=sys.stderr)
                raise
            await page.screenshot(out)
            shown = await page.evaluate(
                "[...document.querySelectorAll('[data-stream]')].map((c) =>"
                " c.dataset.stream + ': ' + c.querySelector('.final').textContent"
                " + (c.querySelector('.objects').textContent ? ' [' + c.querySelector('.objects').textContent + ']' : ''))")
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
    print(f"wrote {out} (showing: {shown})")
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    ap.add_argument("--source", action="append", default=[], metavar="[ID=]URL_OR_PATH",
                    help="a stream (repeatable; default: two synthetic streams)")
    ap.add_argument("--engine", help="engine folder for streamcap run --engine (default: the configured one)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--finals", type=int, default=3, help="finals each stream shows before the picture")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the page to be ready")
    a = ap.parse_args(argv)
    raise SystemExit(asyncio.run(main(a.out, parse_sources(a.source), a.engine, run_args, a.width, a.height,
                                      a.finals, a.timeout)))
