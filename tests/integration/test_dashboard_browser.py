"""The operator dashboard (``/dashboard``) in a real headless Chromium against the real service.

Real: the service (demo model in ONNX Runtime, two synthetic streams, aiohttp server, auth, a
caption alert rule), Chromium (driven over DevTools by ``tools.browser``), the page's own websocket
to ``/ws``, its reconnects, and the server's answers (replay, alerts and their acknowledgement,
close code 4401 with a reason). Every wait polls the DOM with a timeout as the failure limit;
nothing sleeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamcap.outputs import wire
from streamcap.runtime.config import DEMO_SOURCE_URL, load_config
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient
from tools.browser import Chromium, Page, find_chromium

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VIEW_TOKEN = "view-secret-123"
SECOND_STREAM = ("lobby", "synthetic:shapes?seed=4&fps=10&size=320x240&scene_s=6")
#: the page's reconnect backoff while the server was down reaches 15 s at most, then one retry
RECONNECT_WAIT_S = 60.0
WAIT_S = 25.0  # first final of a synthetic stream: about 2.5 s of media after the start
WIDTH, HEIGHT = 1280, 720


@pytest.fixture
def chromium(require_system: Callable[[str], None]) -> None:
    if find_chromium() is None:
        require_system("chromium is not installed (Debian package: chromium)")


def _config(port: int = 0, auth: dict | None = None, two_streams: bool = False) -> Any:
    overrides: dict[str, Any] = {"server": {"port": port}, "auth": auth or {}}
    if two_streams:
        overrides["sources"] = [{"id": "demo", "url": DEMO_SOURCE_URL},
                                {"id": SECOND_STREAM[0], "url": SECOND_STREAM[1]}]
    return load_config(None, environ={}, overrides=overrides)


def _card(stream: str) -> str:
    """JS: the card element of ``stream``."""
    return f"document.querySelector('[data-stream={json.dumps(stream)}]')"


def _part(stream: str, selector: str) -> str:
    """JS: the element matching ``selector`` inside the card of ``stream`` (or undefined)."""
    return f"{_card(stream)}?.querySelector({json.dumps(selector)})"


CONN = "document.getElementById('conn')"
LOG = "document.getElementById('log')"


def _text(selector_js: str) -> str:
    """JS: the trimmed text of an element expression, or '' when it does not exist."""
    return f"(() => {{ const e = {selector_js}; return e ? e.textContent.trim() : ''; }})()"


async def _wait_state(page: Page, stream: str, state: str) -> None:
    await page.wait_for(f"{_text(_part(stream, '.state'))} === {json.dumps(state)}", timeout=WAIT_S)


async def _shown_finals(page: Page, stream: str, at_least: int) -> dict[str, Any]:
    """The card's current final and recent-finals rows, once it lists ``at_least`` finals."""
    return await page.wait_for(
        f"(() => {{ const c = {_card(stream)}; if (!c || !c.querySelector('.final').textContent) return null;"
        " const rows = [...c.querySelectorAll('.finals li')].map((li) => ({seq: Number(li.dataset.seq),"
        " start: Number(li.dataset.start), end: Number(li.dataset.end),"
        " time: li.querySelector('.time').textContent, text: li.querySelector('.text').textContent}));"
        f" return rows.length >= {at_least} ? {{final: c.querySelector('.final').textContent, rows}} : null; }})()",
        timeout=WAIT_S)


def _media_span(shown: str) -> tuple[float, float]:
    """The (start, end) media seconds of a shown ``"1.5–4.0 s"``."""
    match = re.fullmatch(r"(\d+\.\d)–(\d+\.\d) s", shown)
    assert match is not None, f"not a media time span: {shown!r}"
    return float(match.group(1)), float(match.group(2))


async def _assert_finals_were_published(page: Page, svc: Service, stream: str, at_least: int = 1) -> str:
    """The card's finals are finals the hub published (same seq, text and media time), newest
    first, and its current final is the newest of them; returns that caption text."""
    shown = await _shown_finals(page, stream, at_least)
    published = {c.seq: c for c in svc.hub.recent_finals(stream)}
    seqs = [row["seq"] for row in shown["rows"]]
    assert seqs == sorted(seqs, reverse=True), f"{stream}: finals not newest first: {seqs}"
    assert len(seqs) <= 8
    for row in shown["rows"]:
        caption = published.get(row["seq"])
        assert caption is not None, f"{stream}: shown final {row} was never published ({sorted(published)})"
        wire_span = (round(caption.start_s, 3), round(caption.end_s, 3))
        assert (row["text"], (row["start"], row["end"])) == (caption.text, wire_span)
        assert _media_span(row["time"]) == pytest.approx(wire_span, abs=0.051)
    assert shown["final"] == shown["rows"][0]["text"]
    return shown["final"]


async def test_dashboard_shows_both_streams_live_with_the_finals_the_server_published(
        chromium: None, artefact_dir: Path) -> None:
    async with Service(_config(two_streams=True)) as svc, Chromium(WIDTH, HEIGHT) as browser, \
            WireClient(svc.server.ws_url() + "?streams=demo") as client:
        page = await browser.new_page(svc.url("/dashboard"))
        await page.wait_for(f"{_text(CONN)} === 'connected'", timeout=WAIT_S)
        for stream, at_least in (("demo", 2), (SECOND_STREAM[0], 1)):  # 2: a scene change (6 s)
            await _wait_state(page, stream, "live")
            text = await _assert_finals_were_published(page, svc, stream, at_least)
            assert text in {c.text for c in svc.hub.recent_finals(stream)}
        # a partial that says something new shows below the final until a final replaces it
        partial = await page.wait_for(_text(_part("demo", ".partial")), timeout=WAIT_S)
        await client.wait_for(
            lambda: partial in {m.text for m in client.of(wire.CaptionMsg, "demo") if m.state == "partial"},
            timeout=5, what=f"the server to have sent the partial the page shows ({partial!r})")
        await page.screenshot(artefact_dir / "dashboard.png")


async def test_a_real_alert_shows_in_the_feed_and_acknowledging_it_reaches_the_server(
        chromium: None, artefact_dir: Path) -> None:
    # a caption rule on the demo stream (whose every caption names a shape) fires on its first final
    cfg = load_config(None, environ={}, overrides={"server": {"port": 0}, "alerts": {"rules": [
        {"name": "<b>shape</b> seen", "keywords": ["circle", "square", "triangle"], "severity": "critical"}]}})
    async with Service(cfg) as svc, Chromium(WIDTH, HEIGHT) as browser:
        page = await browser.new_page(svc.url("/dashboard"))
        await _wait_state(page, "demo", "live")
        entry = await page.wait_for(
            "(() => { const li = document.querySelector('#alerts li');"
            " return li ? {id: li.dataset.alert, rule: li.querySelector('.rule').textContent,"
            " severity: li.dataset.severity, meta: li.querySelector('.meta').textContent,"
            " markup: li.querySelectorAll('b').length} : null; })()", timeout=WAIT_S)
        record = next(r for r in svc.hub.recent_alerts() if r.alert.id == entry["id"])
        assert entry["rule"] == "<b>shape</b> seen" and entry["markup"] == 0  # server text stays text
        assert entry["severity"] == "critical"
        assert entry["meta"].startswith("demo · ") and f"caption #{record.alert.caption_seq}" in entry["meta"]
        await page.evaluate("document.querySelector('#alerts li .ack').click()")
        shown = await page.wait_for(
            "(() => { const b = document.querySelector('#alerts li .ack');"
            " return b.textContent.startsWith('Acknowledged by') ? b.textContent : ''; })()", timeout=WAIT_S)
        assert record.acked_by is not None and record.acked_by in shown  # the server recorded who
        state = await page.evaluate(
            "(() => { const li = document.querySelector('#alerts li');"
            " return [li.classList.contains('acked'), li.querySelector('.ack').disabled,"
            " document.getElementById('conn').dataset.state]; })()")
        assert state == [True, True, "connected"]
        # a dashboard opened later gets the alert replayed, already acknowledged
        late = await browser.new_page(svc.url("/dashboard"))
        replayed = await late.wait_for(
            "(() => { const b = document.querySelector('#alerts li .ack');"
            " return b && b.disabled ? b.textContent : ''; })()", timeout=WAIT_S)
        assert replayed == shown
        await page.screenshot(artefact_dir / "dashboard-alert.png")


async def test_dashboard_shows_the_refusal_reason_and_retries_slowly_once_tokens_are_needed(
        chromium: None, artefact_dir: Path) -> None:
    auth = {"tokens": [{"scope": "view", "token": VIEW_TOKEN}]}
    async with Chromium(WIDTH, HEIGHT) as browser:
        # an open dashboard, then the server restarts on the same port with tokens configured
        async with Service(_config()) as public:
            port = public.port
            open_page = await browser.new_page(public.url("/dashboard"))
            await _wait_state(open_page, "demo", "live")
        async with Service(_config(port=port, auth=auth)) as svc:
            refusal = await open_page.wait_for(
                "(() => { const r = document.getElementById('refusal');"
                " return r.classList.contains('shown') && document.getElementById('conn').dataset.state === 'refused'"
                " ? r.textContent : ''; })()", timeout=RECONNECT_WAIT_S)
            assert "needs a token" in refusal and "4401" in refusal
            conn = await open_page.evaluate(_text(CONN))
            retry = re.search(r"retry in (\d+) s", conn)
            assert retry is not None and int(retry.group(1)) >= 20, conn
            await open_page.screenshot(artefact_dir / "dashboard-refused.png")

            # opened fresh without a token, the page itself is refused (HTTP 401 with the reason)
            anonymous = await browser.new_page(svc.url("/dashboard"))
            body = await anonymous.wait_for(_text("document.body"), timeout=WAIT_S)
            assert "needs a token" in body
            assert await anonymous.evaluate("document.getElementById('conn') === null")

            # with ?token= it gets in, and so does its websocket
            page = await browser.new_page(svc.url(f"/dashboard?token={VIEW_TOKEN}"))
            await _wait_state(page, "demo", "live")
            await _assert_finals_were_published(page, svc, "demo")
            assert await page.evaluate("document.getElementById('refusal').classList.contains('shown')") is False
            # meanwhile the refused dashboard has not come back: one refused socket, one refused page
            refused = svc.metrics.registry.get_sample_value("streamcap_requests_refused_total", {"status": "401"})
            assert refused == 2.0
