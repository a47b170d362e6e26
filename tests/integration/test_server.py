"""streamcap.server against real peers on loopback: a real ``websockets`` client for /ws and a
plain HTTP/1.1 client for the pages. Captions are published through the Hub, as the pipeline
does. Every wait is bounded by a timeout; nothing sleeps."""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamcap.outputs import wire
from streamcap.runtime.metrics import Metrics
from streamcap.server import Hub, Server
from streamcap.server.access import DECISION_KEY, RouteAccess
from streamcap.server.auth import AccessPolicy, Decision, Scope
from streamcap.core.types import Caption, CaptionState, Status, StreamState

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(60)]

TIMEOUT_S = 5.0
STREAMS = ["a", "b"]


def caption(
    stream: str, seq: int, state: CaptionState = CaptionState.FINAL, text: str = ""
) -> Caption:
    return Caption(
        stream, seq, state, text or f"{stream} caption {seq}", seq * 0.5, seq * 0.5 + 3.0
    )


def health() -> dict:
    return {
        "a": {"state": "live", "detail": "", "last_caption_age_s": 0.4},
        "b": {"state": "reconnecting", "detail": "connection refused", "last_caption_age_s": None},
    }


class Harness:
    def __init__(self, hub: Hub, metrics: Metrics, server: Server) -> None:
        self.hub, self.metrics, self.server = hub, metrics, server

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws{query}"

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"streamcap_{name}", labels) or 0.0


async def make_harness(**hub_kwargs: int) -> Harness:
    metrics = Metrics()
    hub = Hub(metrics=metrics, **hub_kwargs)
    server = Server(
        hub, metrics, host="127.0.0.1", port=0, health=health, streams=lambda: list(STREAMS)
    )
    await server.start()
    return Harness(hub, metrics, server)


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await make_harness(replay_finals=3)
    try:
        yield h
    finally:
        await h.server.stop()


async def receive(ws: ClientConnection) -> wire.ServerMessage:
    async with asyncio.timeout(TIMEOUT_S):
        return wire.decode_server_message(await ws.recv())


async def ping_pong(ws: ClientConnection) -> None:
    """Round trip a ping: everything the server queued before the pong has been received."""
    await ws.send(wire.encode_ping())
    assert await receive(ws) == wire.PongMsg()


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)
    }
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, body


# --- websocket --------------------------------------------------------------------------------


async def test_hello_comes_first_then_replay_then_live_captions(harness: Harness) -> None:
    hub = harness.hub
    hub.publish_status(Status("a", StreamState.LIVE, "up"))
    for seq in range(5):
        hub.publish_caption(caption("a", seq))
    hub.publish_caption(caption("a", 5, CaptionState.PARTIAL))

    async with connect(harness.ws_url()) as ws:
        hello = await receive(ws)
        assert isinstance(hello, wire.HelloMsg)
        assert hello.server == "streamcap" and hello.streams == tuple(STREAMS)
        assert hello.subscribed is None
        assert await receive(ws) == wire.StatusMsg("a", StreamState.LIVE, "up")
        replay = [await receive(ws) for _ in range(3)]
        assert [(m.seq, m.state) for m in replay] == [(s, CaptionState.FINAL) for s in (2, 3, 4)]

        hub.publish_caption(caption("a", 6, CaptionState.PARTIAL, "live one"))
        live = await receive(ws)
        assert isinstance(live, wire.CaptionMsg)
        assert (live.seq, live.state, live.text, live.start, live.end) == (
            6,
            CaptionState.PARTIAL,
            "live one",
            3.0,
            6.0,
        )


async def test_streams_query_filters_what_a_client_receives(harness: Harness) -> None:
    harness.hub.publish_caption(caption("b", 0))  # would be replayed to an unfiltered client
    async with connect(harness.ws_url("?streams=a")) as ws:
        hello = await receive(ws)
        assert isinstance(hello, wire.HelloMsg) and hello.subscribed == ("a",)
        harness.hub.publish_caption(caption("b", 1))
        harness.hub.publish_caption(caption("a", 0))
        msg = await receive(ws)
        assert isinstance(msg, wire.CaptionMsg) and msg.stream == "a"
        await ping_pong(ws)  # nothing from b was queued in between


async def test_subscribe_message_replaces_the_subscription(harness: Harness) -> None:
    harness.hub.publish_caption(caption("b", 0))
    async with connect(harness.ws_url("?streams=a")) as ws:
        await receive(ws)  # hello
        await ws.send(wire.encode_subscribe(["b"]))
        replayed = await receive(ws)
        assert isinstance(replayed, wire.CaptionMsg) and (replayed.stream, replayed.seq) == ("b", 0)
        await ping_pong(ws)
        harness.hub.publish_caption(caption("a", 0))
        harness.hub.publish_caption(caption("b", 1))
        msg = await receive(ws)
        assert isinstance(msg, wire.CaptionMsg) and (msg.stream, msg.seq) == ("b", 1)


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        '{"type":"dance"}',
        '{"type":"ping","v":2}',
        '{"type":"subscribe","streams":"a"}',
    ],
)
async def test_bad_client_message_gets_an_error_and_the_connection_stays_usable(
    harness: Harness, bad: str
) -> None:
    async with connect(harness.ws_url()) as ws:
        await receive(ws)  # hello
        await ws.send(bad)
        error = await receive(ws)
        assert isinstance(error, wire.ErrorMsg) and error.code == "bad_message" and error.detail
        await ping_pong(ws)
        harness.hub.publish_caption(caption("a", 0))
        assert isinstance(await receive(ws), wire.CaptionMsg)


async def test_oversized_client_message_gets_an_error_not_a_disconnect(harness: Harness) -> None:
    async with connect(harness.ws_url()) as ws:
        await receive(ws)
        await ws.send('{"type":"ping","pad":"' + "x" * wire.MAX_CLIENT_MESSAGE_BYTES + '"}')
        error = await receive(ws)
        assert isinstance(error, wire.ErrorMsg) and "exceeds" in error.detail
        await ping_pong(ws)


async def test_client_that_never_reads_is_dropped_while_another_receives_everything() -> None:
    h = await make_harness(replay_finals=0, client_queue_size=8)
    letters = string.ascii_letters
    rng = random.Random(7)
    try:
        async with connect(h.ws_url(), max_queue=2) as slow, connect(h.ws_url()) as fast:
            # A hello means the handler has registered with the hub. After its hello, `slow`
            # reads nothing until it has been dropped.
            assert isinstance(await receive(slow), wire.HelloMsg)
            assert isinstance(await receive(fast), wire.HelloMsg)
            published = 0
            # ~32 KB captions fill the never-read socket's buffers, then its hub queue.
            while h.sample("clients_dropped_total", reason="slow_client") == 0:
                assert published < 4000, "the slow client was never dropped"
                text = "".join(rng.choices(letters, k=32_000))
                h.hub.publish_caption(caption("a", published, text=text))
                msg = await receive(fast)
                assert isinstance(msg, wire.CaptionMsg) and msg.seq == published
                published += 1
            for _ in range(20):  # the fast client carries on, on time
                h.hub.publish_caption(caption("a", published))
                msg = await receive(fast)
                assert isinstance(msg, wire.CaptionMsg) and msg.seq == published
                published += 1
            assert len(h.hub.clients) == 1

            got: list[int] = []
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(TIMEOUT_S):
                    while True:
                        msg = wire.decode_server_message(await slow.recv())
                        if isinstance(msg, wire.CaptionMsg):
                            got.append(msg.seq)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008
            assert "slow client" in closed.value.rcvd.reason
            assert got == list(range(len(got))) and len(got) < published  # an in-order prefix
    finally:
        await h.server.stop()
    assert h.sample("messages_dropped_total", reason="slow_client") >= 1


async def test_stop_is_bounded_by_the_close_timeout_for_a_client_that_never_reads() -> None:
    metrics = Metrics()
    hub = Hub(metrics=metrics, replay_finals=0, client_queue_size=64)
    server = Server(
        hub, metrics, host="127.0.0.1", port=0, health=health, streams=list, close_timeout_s=0.5
    )
    await server.start()
    h = Harness(hub, metrics, server)
    rng = random.Random(11)
    try:
        # close_timeout: the stuck client's own close must not wait on the aborted socket
        async with (
            connect(h.ws_url(), max_queue=2, close_timeout=0.5) as stuck,
            connect(h.ws_url()) as fast,
        ):
            assert isinstance(await receive(stuck), wire.HelloMsg)
            assert isinstance(await receive(fast), wire.HelloMsg)
            stuck_handle = hub.clients[0]
            seq = 0
            while stuck_handle.queued < 4:  # its sender is blocked on a full socket
                assert seq < 4000 and not stuck_handle.closed
                text = "".join(rng.choices(string.ascii_letters, k=32_000))
                hub.publish_caption(caption("a", seq, text=text))
                assert isinstance(await receive(fast), wire.CaptionMsg)
                seq += 1
            async with asyncio.timeout(3.0):  # close timeout 0.5 s, then the socket is aborted
                await server.stop()
            assert fast.close_code == 1001
    finally:
        await server.stop()
    assert h.sample("clients") == 0


async def test_stop_closes_clients_with_going_away() -> None:
    h = await make_harness()
    async with connect(h.ws_url()) as ws:
        await receive(ws)
        await h.server.stop()
        async with asyncio.timeout(TIMEOUT_S):
            await ws.wait_closed()
        assert ws.close_code == 1001
    assert h.sample("clients") == 0


# --- HTTP -------------------------------------------------------------------------------------


async def test_healthz_returns_json_per_stream(harness: Harness) -> None:
    status, headers, body = await http_get(harness.server.port, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert doc["streams"] == health()


async def test_metrics_exposes_every_metric_name(harness: Harness) -> None:
    harness.hub.publish_caption(caption("a", 0))
    status, headers, body = await http_get(harness.server.port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in (
        "frames_in_total",
        "frames_dropped_total",
        "windows_captioned_total",
        "windows_dropped_total",
        "captions_total",
        "engine_latency_seconds",
        "glass_to_caption_seconds",
        "clients",
        "clients_dropped_total",
        "messages_dropped_total",
        "source_reconnects_total",
        "stream_up",
    ):
        assert f"# TYPE streamcap_{name} " in text, name
    assert 'streamcap_captions_total{state="final",stream="a"} 1.0' in text


async def test_overlay_serves_html_wired_to_the_websocket(harness: Harness) -> None:
    status, headers, body = await http_get(harness.server.port, "/overlay?stream=a&size=60")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert "new WebSocket(" in page
    assert "/ws" in page and "streams=" in page
    assert "background: transparent" in page


async def test_index_links_an_overlay_per_stream(harness: Harness) -> None:
    status, _, body = await http_get(harness.server.port, "/")
    assert status == 200
    for stream in STREAMS:
        assert f'href="/overlay?stream={stream}"' in body.decode()


async def test_unknown_path_is_404(harness: Harness) -> None:
    status, _, _ = await http_get(harness.server.port, "/nope")
    assert status == 404


async def test_ws_path_with_an_empty_streams_list_is_400(harness: Harness) -> None:
    status, _, body = await http_get(harness.server.port, "/ws?streams=")
    assert status == 400 and b"streams" in body


async def test_plain_get_on_ws_path_is_426(harness: Harness) -> None:
    status, _, _ = await http_get(harness.server.port, "/ws")
    assert status == 426


async def test_failing_health_callable_gives_500_and_the_server_keeps_serving() -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    metrics = Metrics()
    async with Server(
        Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=broken, streams=list
    ) as server:
        status, _, body = await http_get(server.port, "/healthz")
        assert status == 500 and json.loads(body)["status"] == "error"
        status, _, _ = await http_get(server.port, "/metrics")
        assert status == 200


async def test_healthz_is_503_with_the_reason_once_the_pipeline_has_failed() -> None:
    failure: list[str] = []
    metrics = Metrics()
    async with Server(
        Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=health, streams=lambda: list(STREAMS),
        failure=lambda: failure[0] if failure else None,
    ) as server:
        status, _, body = await http_get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        failure.append("pipeline stopped: RuntimeError: engine crashed")
        status, headers, body = await http_get(server.port, "/healthz")
        assert status == 503 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"status": "error", "detail": "pipeline stopped: RuntimeError: engine crashed",
                                    "version": server.version, "streams": health()}


async def test_healthz_is_503_without_streams_when_the_pipeline_failed_and_health_cannot_be_read() -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    metrics = Metrics()
    async with Server(
        Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=broken, streams=list,
        failure=lambda: "pipeline stopped",
    ) as server:
        status, _, body = await http_get(server.port, "/healthz")
        assert status == 503
        assert json.loads(body) == {"status": "error", "detail": "pipeline stopped", "version": server.version}


class _Probe:
    """An extension with one route, to watch the access middleware from inside a handler."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def routes(self) -> list[web.RouteDef]:
        async def probe(request: web.Request) -> web.Response:
            self.decisions.append(request[DECISION_KEY])
            return web.Response(text="ok")

        return [web.get("/probe", probe)]

    async def aclose(self) -> None:
        pass


async def test_a_route_missing_from_the_access_table_stops_the_server_from_starting() -> None:
    metrics = Metrics()
    server = Server(Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=dict, streams=list,
                    extensions=[_Probe()])
    with pytest.raises(RuntimeError, match="GET /probe"):
        await server.start()


async def test_the_access_middleware_refuses_before_the_handler_and_hands_it_the_decision() -> None:
    view = "view-secret-123"
    probe = _Probe()
    metrics = Metrics()
    server = Server(Hub(metrics=metrics), metrics, host="127.0.0.1", port=0, health=dict, streams=list,
                    access=AccessPolicy({view: Scope.VIEW}), extensions=[probe])
    server.route_access[("GET", "/probe")] = RouteAccess(Scope.VIEW)
    async with server:
        status, headers, body = await http_get(server.port, "/probe")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert json.loads(body)["error"]["code"] == "unauthorized" and probe.decisions == []
        status, _, body = await http_get(server.port, f"/probe?token={view}")
        assert (status, body) == (200, b"ok")
        assert [d.scope for d in probe.decisions] == [Scope.VIEW]
        # the pages answer a refusal as text; /healthz answers everyone, but anonymously only ok or not
        status, headers, body = await http_get(server.port, "/overlay?stream=a")
        assert status == 401 and headers["content-type"].startswith("text/plain") and b"needs a token" in body
        status, _, body = await http_get(server.port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert metrics.registry.get_sample_value("streamcap_requests_refused_total", {"status": "401"}) == 2.0
