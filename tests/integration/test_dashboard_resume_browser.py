"""The operator dashboard in headless Chromium resumes by seq: when its connection drops it
reconnects with ``since=`` the newest caption it shows of each stream, gets from the caption store
every final it missed, and keeps what it shows: its lists of finals then hold every stored final
of their span once, with no gap at the reconnect.

Real: the service (demo model in ONNX Runtime, two synthetic streams, a caption store in a tmp
data dir), Chromium driven over DevTools, the page's own websocket. The page is taken offline by
DevTools network emulation while the server drops it, so its reconnects fail until each stream has
stored finals it never saw; the server sends one final per resume (``max_resume_finals = 1``), so
the page must also continue a resume cut short. A second test restarts a server without a store:
it counts afresh, and the page starts its list over. Every wait is on a condition with a timeout
as the failure limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import pytest

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from streamcap.server.hub import DisconnectReason
from tests.conftest import unavailable
from tests.helpers.wsclient import WireClient
from tools.browser import BrowserError, Chromium, Page, find_chromium

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STREAMS = {"cam": "synthetic:shapes?seed=2&fps=10&size=320x240&scene_s=2",
           "yard": "synthetic:shapes?seed=5&fps=10&size=320x240&scene_s=2"}
MISSED = 2           # finals each stream stores while the page is away
WAIT_S = 60.0        # a few finals of each synthetic stream (two streams share the CPU)
RECONNECT_WAIT_S = 40.0  # the page's backoff after a few failed tries (0.5 s doubling) and one retry
RECENT_FINALS = 8    # rows a card lists (the page's RECENT_FINALS)

#: JS: per stream, the seqs its card lists, newest first
LISTED = ("Object.fromEntries([...document.querySelectorAll('#streams [data-stream]')].map((c) =>"
          " [c.dataset.stream, [...c.querySelectorAll('.finals li')].map((li) => Number(li.dataset.seq))]))")
CONN = "document.getElementById('conn').dataset.state"
OFFLINE = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
ONLINE = {**OFFLINE, "offline": False}
#: JS: the ids of the alerts in the feed, newest first
ALERTS = "[...document.querySelectorAll('#alerts li')].map((li) => li.dataset.alert)"
#: JS: the URL of the page's current websocket ('' while it has none)
SOCKET_URL = "(() => { const ws = window.streamcapDashboard.socket(); return ws ? ws.url : ''; })()"


def _since(url: str) -> dict[str, int]:
    """The ``since`` of a /ws URL the page used, as {stream: seq}."""
    values = parse_qs(urlsplit(url).query).get("since", [])
    assert len(values) <= 1, url
    out: dict[str, int] = {}
    for part in values[0].split(",") if values else []:
        stream, _, seq = part.rpartition(":")
        out[stream] = int(seq)
    return out


def _stored_seqs(svc: Service, stream: str, after: int) -> list[int]:
    assert svc.store is not None
    return [wire.decode_server_message(text).seq for text in svc.store.finals_after(stream, after, 10_000)]


async def _listed(page: Page, at_least: Mapping[str, int]) -> dict[str, list[int]]:
    """Each card's listed seqs, once every stream's newest listed final is at least ``at_least``."""
    cond = " && ".join(f"(l[{json.dumps(s)}]?.[0] ?? -1) >= {n}" for s, n in at_least.items())
    return await page.wait_for(f"(() => {{ const l = {LISTED}; return {cond} ? l : null; }})()", timeout=WAIT_S)


async def test_a_dropped_dashboard_resumes_with_since_and_lists_every_stored_final_once(tmp_path) -> None:
    if find_chromium() is None:
        unavailable("chromium is not installed (Debian package: chromium)")
    cfg = load_config(None, environ={}, overrides={
        # one final per resume: the rest comes after resume_truncated, by the page's subscribe with since
        "server": {"port": 0, "data_dir": str(tmp_path), "max_resume_finals": 1},
        "sources": [{"id": sid, "url": url} for sid, url in STREAMS.items()],
        # every caption of the shapes world names a shape: an alert on each stream's first final
        "alerts": {"rules": [{"name": "shape seen", "keywords": ["circle", "square", "triangle"]}]}})
    async with Service(cfg) as svc, Chromium(1280, 720) as browser:
        connects: list[dict[str, int]] = []  # the since of every websocket the hub got, in order
        reconnected = asyncio.Event()
        add_client = svc.hub.add_client

        def spy(streams=None, since=None, **more):
            connects.append(dict(since or {}))
            if len(connects) >= 2:
                reconnected.set()
            return add_client(streams, since=since, **more)

        svc.hub.add_client = spy
        page = await browser.new_page(svc.url("/dashboard"))
        before = await _listed(page, {sid: 0 for sid in STREAMS})  # a final of each stream listed
        alerts_before = await page.wait_for(f"(() => {{ const a = {ALERTS}; return a.length ? a : null; }})()", WAIT_S)
        assert connects == [{}] and _since(await page.evaluate(SOCKET_URL)) == {}  # first: nothing to resume

        # the page goes offline (its reconnects fail), then the server drops its connection
        await page.send("Network.enable")
        await page.send("Network.emulateNetworkConditions", OFFLINE)
        svc.hub.close_all(DisconnectReason.SERVER_SHUTDOWN)
        await page.wait_for(f"{CONN} === 'closed'", timeout=10)
        shown = await page.evaluate(LISTED)  # nothing arrives any more: what it had when dropped
        assert all(shown[sid] and shown[sid][0] >= before[sid][0] for sid in STREAMS), (before, shown)

        # while it is away each stream stores finals it has not seen
        first_missed: dict[str, int] = {}
        missed_to: dict[str, int] = {}
        async with WireClient(svc.server.ws_url()) as watcher:
            def stored_enough() -> bool:
                for sid in STREAMS:
                    seqs = _stored_seqs(svc, sid, shown[sid][0])
                    if len(seqs) < MISSED:
                        return False
                    first_missed[sid], missed_to[sid] = seqs[0], seqs[MISSED - 1]
                return True

            await watcher.wait_for(stored_enough, timeout=WAIT_S, what=f"{MISSED} finals of each stream stored")
        assert len(connects) == 2, connects  # only the watcher connected meanwhile: the page could not
        connects.pop()
        reconnected.clear()

        # back online: it reconnects by itself, asking for what came after the newest caption it had
        await page.send("Network.emulateNetworkConditions", ONLINE)
        await asyncio.wait_for(reconnected.wait(), RECONNECT_WAIT_S)
        await page.wait_for(f"{CONN} === 'connected'", timeout=10)
        url_since = _since(await page.evaluate(SOCKET_URL))
        assert url_since == connects[1], (url_since, connects)  # the hub got what the URL said
        assert set(url_since) == set(STREAMS), url_since  # every stream it showed a caption of
        for sid in STREAMS:  # at or past its newest listed final (a partial after it counts), before what it missed
            assert shown[sid][0] <= url_since[sid] < first_missed[sid], (sid, shown, url_since, first_missed)

        # the finals it missed come from the store: each list is the stored finals of its span, once
        after = await _listed(page, missed_to)
        for sid in STREAMS:
            listed = after[sid]
            assert len(listed) == len(set(listed)), f"{sid}: a final listed twice: {listed}"
            assert listed == sorted(listed, reverse=True), f"{sid}: not newest first: {listed}"
            stored = [seq for seq in _stored_seqs(svc, sid, listed[-1] - 1) if seq <= listed[0]]
            assert listed == stored[::-1], f"{sid}: listed {listed}, stored in that span {stored}"
            assert len(listed) == RECENT_FINALS or listed[-1] == _stored_seqs(svc, sid, -1)[0], listed
            # the span reaches back to the first final it missed (those came with the resume) and
            # keeps what it listed before the drop
            assert listed[-1] <= first_missed[sid], (sid, listed, first_missed)
            assert set(shown[sid]) <= set(listed) or len(listed) == RECENT_FINALS, (sid, shown, listed)
        # the alert feed kept its alerts, each once (the server replays them on every connection)
        alerts_after = await page.evaluate(ALERTS)
        assert len(alerts_after) == len(set(alerts_after)) and set(alerts_before) <= set(alerts_after), \
            (alerts_before, alerts_after)


async def test_a_dashboard_resuming_at_a_server_that_counts_afresh_lists_only_the_new_servers_finals(
        tmp_path) -> None:
    # no caption store: a restarted server numbers from 0 again and answers a since with its replay
    # of recent finals; the first caption, numbered at or below the page's own, makes the card start over
    if find_chromium() is None:
        unavailable("chromium is not installed (Debian package: chromium)")

    def config(port: int):
        return load_config(None, environ={}, overrides={
            "server": {"port": port, "persist": False, "data_dir": str(tmp_path)},
            "sources": [{"id": "cam", "url": STREAMS["cam"]}]})

    async with Chromium(1280, 720) as browser:
        async with Service(config(0)) as old:
            port = old.port
            page = await browser.new_page(old.url("/dashboard"))
            shown = await page.wait_for(
                f"(() => {{ const l = {LISTED}.cam; return l && l.length >= 3 ? l : null; }})()", timeout=WAIT_S)
            await page.send("Network.enable")  # its reconnects fail until the new server has a final
            await page.send("Network.emulateNetworkConditions", OFFLINE)
        async with Service(config(port)) as svc:
            async with WireClient(svc.server.ws_url()) as watcher:
                await watcher.wait_for(lambda: svc.hub.recent_finals("cam"), timeout=WAIT_S, what="a final")
            await page.send("Network.emulateNetworkConditions", ONLINE)
            await page.wait_for("(() => { if (window.streamcapDashboard.socket()) return false;"  # Retry now
                                " document.getElementById('retry').click(); return true; })()",
                                timeout=RECONNECT_WAIT_S)
            url = await page.wait_for(f"(() => {{ const u = {SOCKET_URL}; return {CONN} === 'connected' && u; }})()",
                                      timeout=10)
            since = _since(url)
            assert set(since) == {"cam"} and since["cam"] >= shown[0], (url, shown)
            # its list becomes the new server's finals, none of the old server's left
            deadline = asyncio.get_running_loop().time() + WAIT_S
            while True:  # the page's list against what the server published meanwhile
                published = [c.seq for c in svc.hub.recent_finals("cam")][::-1][:RECENT_FINALS]
                want = json.dumps(json.dumps(published, separators=(",", ":")))  # as JSON.stringify writes it
                try:
                    await page.wait_for(f"JSON.stringify(({LISTED})['cam']) === {want}", timeout=1.0)
                    break
                except BrowserError:
                    listed = (await page.evaluate(LISTED))["cam"]
                    assert asyncio.get_running_loop().time() < deadline, f"listed {listed}, published {published}"
            assert len(published) < len(shown), (shown, published)  # told apart from the old server's list
