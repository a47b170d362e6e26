"""The bus writer against a real redis-server: while Redis is away it keeps what it can (a
bounded queue, the oldest dropped and counted) and writes it all once Redis is back; a stale
writer's lower numbers are refused by Redis and counted; restore() finds where a stream was;
a password in the bus URL is never logged."""

from __future__ import annotations

import logging

import pytest

from streamcap.core.events import CaptionEvent
from streamcap.core.types import Caption, CaptionState
from streamcap.outputs import wire
from streamcap.runtime import bus
from streamcap.runtime.metrics import Metrics
from tests.helpers.servers import RedisServer

pytestmark = pytest.mark.integration


def final(seq: int, state=CaptionState.FINAL) -> CaptionEvent:
    return CaptionEvent(Caption("cam", seq, state, f"caption {seq}", float(seq), seq + 1.0), None)


def metric(m: Metrics, name: str, **labels) -> float:
    return m.registry.get_sample_value(f"streamcap_{name}", labels) or 0.0


async def _seqs(r) -> list[int]:
    return [bus.seq_of(e) for e, _ in await r.xrange(bus.finals_key("cam"))]


async def test_redis_away_queue_bounded_then_everything_queued_is_written(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    r = bus.connect(server.url)
    m = Metrics()
    writer = bus.BusWriter(r, m, queue_size=5, retry_s=0.05)
    writer.start()
    try:
        writer(final(1))
        assert await writer.drain(10)
        server.stop()
        for seq in range(2, 10):  # 8 finals while Redis is away: 5 fit
            writer(final(seq))
        assert writer.queued == 5 and metric(m, "bus_dropped_total", reason="bus_full") == 3
        assert not await writer.drain(2.0)  # it tries, fails and keeps all 5 while Redis is away
        assert writer.queued == 5 and metric(m, "bus_errors_total", op="write") >= 1
        server.start()  # same port, same folder (AOF)
        assert await writer.drain(30)
        assert await _seqs(r) == [1, 5, 6, 7, 8, 9]
    finally:
        await writer.aclose()
        await r.aclose()
        server.stop()


async def test_stale_writer_is_refused_and_restore_finds_the_stream(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    r = bus.connect(server.url)
    m = Metrics()
    new, old = bus.BusWriter(r, m), bus.BusWriter(r, m)
    new.start()
    old.start()
    try:
        assert (await bus.restore(r, "cam")) == bus.Restored(1, None)
        new(final(10))
        new(final(12, CaptionState.PARTIAL))
        assert await new.drain(10)
        old(final(9))  # a replaced worker still running, with older numbers
        assert await old.drain(10)
        assert await _seqs(r) == [10]
        assert metric(m, "bus_dropped_total", reason="stale_seq") == 1
        restored = await bus.restore(r, "cam")
        assert restored.next_seq == 13  # above the partial a viewer may have seen
        assert restored.last_final == final(10).caption
        entry = (await r.xrange(bus.finals_key("cam")))[0][1]["m"]
        assert wire.decode_server_message(entry).text == "caption 10"
    finally:
        await new.aclose()
        await old.aclose()
        await r.aclose()
        server.stop()


async def test_bus_password_is_never_logged(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis", password="s3cret-bus-pw").start()
    url = server.url
    assert "s3cret-bus-pw" in url
    caplog.set_level(logging.DEBUG)
    r = bus.connect(url)
    writer = bus.BusWriter(r, Metrics(), retry_s=0.05)
    writer.start()
    try:
        writer(final(1))
        assert await writer.drain(10)
        server.stop()
        writer(final(2))  # fails: the error path logs
        assert not await writer.drain(0.5)
        logging.getLogger("test").info("bus at %s", bus.safe_url(url))
    finally:
        await writer.aclose(flush_s=0.1)
        await r.aclose()
        server.stop()
    assert "s3cret-bus-pw" not in caplog.text
    assert "bus: cannot write" in caplog.text
