"""Live WebVTT for players, for real: a client follows the demo stream's HLS-style subtitle
playlist over HTTP as a player does (playlist, then each new segment), parses every segment with
webvtt-py, and finds the finals the server published, at their media times."""

from __future__ import annotations

import io

import aiohttp
import pytest
import webvtt

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

SEGMENT_S = 2.0


def _secs(ts: str) -> float:
    h, m, s = ts.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


async def test_a_client_follows_the_live_subtitle_playlist():
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "subtitles": {"live": {"segment_s": SEGMENT_S, "window_segments": 5}}})
    async with Service(cfg) as svc, aiohttp.ClientSession() as http, \
            WireClient(svc.server.ws_url("/ws?streams=demo")) as viewer:
        base = svc.url("/v1/streams/demo/")
        fetched: dict[int, str] = {}
        playlists = []
        for round_ in range(3):  # follow it as a player does: re-read the playlist as media time goes on
            media = svc.pipeline.health()["demo"]["media_s"] or 0.0
            await viewer.wait_for(lambda m=media: (svc.pipeline.health()["demo"]["media_s"] or 0) >= m + 2 * SEGMENT_S
                                  and svc.pipeline.live_subtitles("demo").completed_segments >= 2 * (round_ + 1),
                                  60, "two more segments")
            async with http.get(base + "subtitles.m3u8") as r:
                assert r.status == 200 and r.content_type == "application/vnd.apple.mpegurl"
                playlist = await r.text()
            playlists.append(playlist)
            lines = playlist.splitlines()
            assert lines[0] == "#EXTM3U" and "#EXT-X-ENDLIST" not in lines
            assert f"#EXT-X-TARGETDURATION:{int(SEGMENT_S)}" in lines
            sequence = int(next(x for x in lines if x.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1])
            uris = [x for x in lines if x and not x.startswith("#")]
            for i, uri in enumerate(uris):
                n = sequence + i
                assert uri == f"subtitles/{n}.vtt"
                if n in fetched:
                    continue
                async with http.get(base + uri) as r:
                    assert r.status == 200 and r.content_type == "text/vtt"
                    fetched[n] = await r.text()
        assert len(playlists) == 3 and playlists[0] != playlists[-1]  # the live playlist moved on

        cues = []
        for n, text in sorted(fetched.items()):
            assert "X-TIMESTAMP-MAP=MPEGTS:" in text.splitlines()[1]
            for c in webvtt.from_buffer(io.StringIO(text)).captions:
                start, end = _secs(c.start), _secs(c.end)
                assert end > n * SEGMENT_S - 1e-3 and start < (n + 1) * SEGMENT_S + 1e-3  # it overlaps segment n
                cues.append((start, end, " ".join(c.text.split())))
        finals = [m.text for m in viewer.of(wire.CaptionMsg, "demo") if m.state.value == "final"]
        published = " ".join(" ".join(t.split()) for t in finals)
        shown = {text for _, _, text in cues}
        # only published finals, in order: a cue is a final, a part of one, or (subtitle rules:
        # a final too short to read is merged into the next) consecutive finals joined
        assert shown and all(text in published for text in shown), (shown, finals)
        async with http.get(base + "subtitles/999999.vtt") as r:
            assert r.status == 404
        async with http.get(svc.url("/v1/streams/nope/subtitles.m3u8")) as r:
            assert r.status == 404


async def test_with_tokens_the_playlist_carries_no_token_and_segments_are_private():
    """Issue 11, defect 6: a token given to the playlist request never reaches a URL the server
    writes, and a token-protected segment is never marked for shared caches."""
    view = "view-secret-7c2e"
    cfg = load_config(None, environ={}, overrides={
        "server": {"port": 0}, "auth": {"tokens": [{"scope": "view", "token": view}]},
        "subtitles": {"live": {"segment_s": 1.0, "window_segments": 5}}})
    async with Service(cfg) as svc, aiohttp.ClientSession() as http, \
            WireClient(svc.server.ws_url(f"/ws?streams=demo&token={view}")) as viewer:
        await viewer.wait_for(lambda: svc.pipeline.live_subtitles("demo").completed_segments >= 1, 60,
                              "a complete segment")
        base = svc.url("/v1/streams/demo/")
        async with http.get(base + f"subtitles.m3u8?token={view}") as r:
            assert r.status == 200 and r.headers["Cache-Control"].startswith("private")
            playlist = await r.text()
        uris = [x for x in playlist.splitlines() if x and not x.startswith("#")]
        assert uris and all("?" not in uri and view not in uri for uri in uris)
        async with http.get(base + uris[0]) as r:
            assert r.status == 401  # the segment URL alone lets nobody in
        async with http.get(base + uris[0], headers={"Authorization": f"Bearer {view}"}) as r:
            assert r.status == 200 and r.content_type == "text/vtt"
            cache = [d.strip() for d in r.headers["Cache-Control"].split(",")]
            assert "private" in cache and "public" not in cache
