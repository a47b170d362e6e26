"""Viewing with tokens configured, through the real server and a real websocket client: no token
is refused (a websocket is closed with 4401 and the reason, a page gets 401), a view token in the
query or the Authorization header is let in, a foreign browser origin is refused (4403); with no
token configured viewing stays public."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.runtime.service import Service

pytestmark = pytest.mark.integration

VIEW = "view-secret-123"
PUBLISH = "publish-secret-123"


def _config(**auth):
    return load_config(None, environ={}, overrides={"server": {"port": 0}, "auth": auth})


async def _refused(url: str, **kw) -> tuple[int, str]:
    """The close code and reason of a websocket the server refuses."""
    async with websockets.connect(url, open_timeout=10, **kw) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def _hello(url: str, **kw) -> wire.HelloMsg:
    async with websockets.connect(url, open_timeout=10, **kw) as ws:
        msg = wire.decode_server_message(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(msg, wire.HelloMsg)
    return msg


def _status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def test_viewing_needs_a_token_once_tokens_are_configured():
    cfg = _config(tokens=[{"scope": "view", "token": VIEW}, {"scope": "publish", "token": PUBLISH}])
    async with Service(cfg) as svc:
        ws = svc.url("/ws").replace("http://", "ws://", 1)
        code, reason = await _refused(ws)
        assert code == 4401 and "needs a token" in reason
        assert await _refused(ws + "?token=not-a-token") == (4401, "unknown token")
        await _hello(ws + f"?token={VIEW}")
        await _hello(ws, additional_headers={"Authorization": f"Bearer {VIEW}"})
        await _hello(ws + f"?token={PUBLISH}")  # publish includes view
        code, reason = await _refused(ws + f"?token={VIEW}", origin="https://evil.example")
        assert code == 4403 and "origin" in reason
        overlay = svc.url("/overlay?stream=demo")
        assert await asyncio.to_thread(_status, overlay) == 401
        assert await asyncio.to_thread(_status, overlay + f"&token={VIEW}") == 200
        assert await asyncio.to_thread(_status, svc.url("/metrics")) == 401  # metrics need view too
        req = urllib.request.Request(svc.url("/metrics"), headers={"Authorization": f"Bearer {VIEW}"})
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=10).read())
        assert b'streamcap_requests_refused_total{status="401"} 4.0' in metrics
        assert b'streamcap_requests_refused_total{status="403"} 1.0' in metrics


async def test_with_no_token_configured_viewing_is_public():
    async with Service(_config()) as svc:
        await _hello(svc.url("/ws").replace("http://", "ws://", 1))
        assert await asyncio.to_thread(_status, svc.url("/overlay?stream=demo")) == 200


async def test_public_view_false_refuses_anonymous_viewers():
    async with Service(_config(public_view=False)) as svc:
        code, _ = await _refused(svc.url("/ws").replace("http://", "ws://", 1))
        assert code == 4401
