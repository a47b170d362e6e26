"""``GET /v1/streams/{id}/snapshot.jpg`` and the dashboard's pictures against the real service.

Real: the service (the demo model in ONNX Runtime behind a thin wrapper that adds one scene object
to every result, as a scene describer would), its synthetic demo stream, the aiohttp server with
tokens, an aiohttp client, and headless Chromium (driven over DevTools by ``tools.browser``) on
``/dashboard?token=``. Every wait is on a condition with a timeout as the failure limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio

from streamcap.core.types import SceneObject
from streamcap.engine.base import load_engine_from_config
from streamcap.outputs import wire
from streamcap.runtime.config import DEMO_SOURCE_URL, load_config
from streamcap.runtime.service import Service
from streamcap.server.snapshot import box_pixels, label_colour
from tests.helpers.wsclient import WireClient
from tools.browser import Chromium, find_chromium

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VIEW = "view-secret-123"
WAIT_S = 25.0
PERSON = SceneObject("person", 1, "right", ((0.2, 0.2, 0.8, 0.8),))
DEMO_ASPECT = 320 / 240  # the demo source's size=320x240


class DescribingEngine:
    """The configured engine, with :data:`PERSON` on every result (what a scene describer adds)."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def caption_batch(self, windows: Sequence, **options) -> list:
        return [dataclasses.replace(r, objects=(PERSON,)) for r in self._engine.caption_batch(windows, **options)]


def _config():
    return load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": [{"scope": "view", "token": VIEW}]},
        "sources": [{"id": "demo", "url": DEMO_SOURCE_URL}, {"id": "cam", "url": "push:"}]})


@pytest_asyncio.fixture
async def svc():
    cfg = _config()
    engine = DescribingEngine(load_engine_from_config(cfg.engine))
    async with Service(cfg, engine=engine) as service:
        yield service


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def _auth(token: str = VIEW) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _decode(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "the snapshot is not a decodable JPEG"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


async def _first_caption(svc: Service) -> wire.CaptionMsg:
    """A caption of the demo stream (its frames are in the ring and a window came back)."""
    async with WireClient(svc.server.ws_url() + f"?streams=demo&token={VIEW}") as client:
        await client.wait_for(lambda: client.of(wire.CaptionMsg, "demo"), timeout=WAIT_S,
                              what="a caption of the demo stream")
        return client.of(wire.CaptionMsg, "demo")[0]


async def test_a_snapshot_is_a_jpeg_of_the_latest_frame_at_the_source_aspect(svc, http) -> None:
    caption = await _first_caption(svc)
    assert caption.objects == (PERSON,)  # the wrapper's object reached the wire
    side = svc.engine.preprocessing.image_size
    async with http.get(svc.url("/v1/streams/demo/snapshot.jpg"), headers=_auth()) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "image/jpeg"
        assert "no-store" in r.headers["Cache-Control"]
        assert float(r.headers["X-Frame-Pts"]) >= 0
        picture = _decode(await r.read())
    assert picture.shape == (side, round(side * DEMO_ASPECT), 3)  # the square frame stretched back
    async with http.get(svc.url("/v1/streams/demo/snapshot.jpg?width=640"), headers=_auth()) as r:
        assert r.status == 200
        assert _decode(await r.read()).shape == (480, 640, 3)


async def test_boxes_are_drawn_where_the_newest_window_saw_its_objects(svc, http) -> None:
    await _first_caption(svc)
    async with http.get(svc.url("/v1/streams/demo/snapshot.jpg?boxes=1&width=640"), headers=_auth()) as r:
        assert r.status == 200, await r.text()
        assert float(r.headers["X-Objects-Window-End"]) > 0
        picture = _decode(await r.read())
    x0, y0, x1, y1 = box_pixels(PERSON.boxes[0], (640, 480))
    colour = np.array(label_colour("person"))
    left_edge = picture[y0 + 20:y1 - 20, x0].astype(int)
    assert (np.abs(left_edge - colour).max(axis=1) < 60).mean() > 0.9  # the person's box colour
    async with http.get(svc.url("/v1/streams/demo/snapshot.jpg?width=640"), headers=_auth()) as r:
        assert "X-Objects-Window-End" not in r.headers
        plain = _decode(await r.read())[y0 + 20:y1 - 20, x0].astype(int)
    assert (np.abs(plain - colour).max(axis=1) < 60).mean() < 0.5  # without boxes: the picture only


async def test_snapshot_refusals_and_errors_are_clear(svc, http) -> None:
    url = svc.url("/v1/streams/demo/snapshot.jpg")
    async with http.get(url) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    async with http.get(url, headers=_auth("not-a-known-token")) as r:
        assert r.status == 401
    async with http.get(url, headers={**_auth(), "Origin": "http://elsewhere.example"}) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
    async with http.get(svc.url("/v1/streams/nope/snapshot.jpg"), headers=_auth()) as r:
        assert r.status == 404
        assert (await r.json())["error"] == {"code": "not_found", "detail": "no stream 'nope'"}
    async with http.get(svc.url("/v1/streams/cam/snapshot.jpg"), headers=_auth()) as r:  # nobody publishes
        assert r.status == 404
        error = (await r.json())["error"]
        assert error["code"] == "not_found" and "no picture yet" in error["detail"]
    for query in ("width=10", "width=4000", "width=abc", "boxes=yes"):
        async with http.get(f"{url}?{query}", headers=_auth()) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request", query


@pytest.fixture
def chromium(require_system: Callable[[str], None]) -> None:
    if find_chromium() is None:
        require_system("chromium is not installed (Debian package: chromium)")


async def test_the_dashboard_shows_each_streams_picture_and_its_object_counts(svc, chromium, artefact_dir) -> None:
    async with Chromium(1280, 720) as browser:
        page = await browser.new_page(svc.url(f"/dashboard?token={VIEW}"))
        card = "document.querySelector('[data-stream=\"demo\"]')"
        shown = await page.wait_for(
            f"(() => {{ const img = {card}?.querySelector('img.snapshot');"
            " return img && img.complete && img.naturalWidth > 0"
            " ? {w: img.naturalWidth, h: img.naturalHeight, src: img.src, pts: Number(img.dataset.pts)} : null; })()",
            timeout=WAIT_S)
        assert shown["src"].startswith("blob:")  # fetched with the token as a header, never in the URL
        assert shown["w"] / shown["h"] == pytest.approx(DEMO_ASPECT, abs=0.02)
        line = await page.wait_for(f"{card}?.querySelector('.objects')?.textContent", timeout=WAIT_S)
        assert line == "person 1 →"
        # the picture is refreshed: a newer frame replaces it
        await page.wait_for(
            f"Number({card}.querySelector('img.snapshot').dataset.pts) > {shown['pts']}", timeout=WAIT_S)
        # the push stream nobody publishes shows no picture, and says so
        empty = await page.evaluate(
            "(() => { const c = document.querySelector('[data-stream=\"cam\"]');"
            " return [c.querySelector('img.snapshot').naturalWidth, c.querySelector('.pic').classList.contains('loaded')]; })()")
        assert empty == [0, False]
        await page.screenshot(artefact_dir / "dashboard-snapshot.png")
