"""The engine's window queue: bounded, named policy per stream kind, every drop counted."""

import asyncio

import numpy as np

from streamcap.runtime.pipeline import WindowQueue
from streamcap.core.types import Frame, Window


def _w(stream: str, i: int) -> Window:
    f = Frame(stream, i, 0, float(i), np.zeros((2, 2, 3), np.uint8))
    return Window(stream, i, float(i), float(i) + 2, (f,))


def test_live_window_replaces_oldest_of_same_stream_when_full_and_counts_it():
    async def go():
        dropped = []
        q = WindowQueue(2, lambda w, r: dropped.append((w.stream, w.index, r)))
        await q.put(_w("a", 0), live=True)
        await q.put(_w("b", 0), live=True)
        await q.put(_w("a", 1), live=True)
        batch = await q.get_batch(10)
        return dropped, [(w.stream, w.index) for w in batch]
    dropped, batch = asyncio.run(go())
    assert dropped == [("a", 0, "engine_busy")]
    assert batch == [("b", 0), ("a", 1)]


def test_file_window_waits_for_room_and_loses_nothing():
    async def go():
        dropped = []
        q = WindowQueue(1, lambda w, r: dropped.append(w))
        await q.put(_w("f", 0), live=False)
        blocked = asyncio.create_task(q.put(_w("f", 1), live=False))
        await asyncio.sleep(0)  # let the producer run up to its wait (no timing involved)
        assert not blocked.done()
        first = await q.get_batch(1)
        await asyncio.wait_for(blocked, 1)
        second = await q.get_batch(1)
        return dropped, first[0].index, second[0].index
    assert asyncio.run(go()) == ([], 0, 1)


def test_batch_takes_at_most_max_batch_in_fifo_order():
    async def go():
        q = WindowQueue(8, lambda w, r: None)
        for i in range(5):
            await q.put(_w("a", i), live=True)
        return [w.index for w in await q.get_batch(3)], len(q)
    assert asyncio.run(go()) == ([0, 1, 2], 2)


def test_batch_waits_for_windows_of_other_streams_up_to_max_wait():
    async def go():
        q = WindowQueue(8, lambda w, r: None)
        await q.put(_w("a", 0), live=True)
        getter = asyncio.create_task(q.get_batch(2, max_wait_s=30.0))
        await asyncio.sleep(0)  # the getter holds one window and waits for a second
        assert not getter.done()
        await q.put(_w("b", 0), live=True)
        # returns as soon as the batch is full, long before the 30 s limit
        batch = await asyncio.wait_for(getter, 5)
        return [(w.stream, w.index) for w in batch]
    assert asyncio.run(go()) == [("a", 0), ("b", 0)]


def test_batch_wait_ends_at_max_wait_with_what_is_queued():
    async def go():
        q = WindowQueue(8, lambda w, r: None)
        await q.put(_w("a", 0), live=True)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        batch = await asyncio.wait_for(q.get_batch(4, max_wait_s=0.05), 5)
        return len(batch), loop.time() - t0
    n, waited = asyncio.run(go())
    assert n == 1
    assert waited >= 0.05


def test_no_wait_takes_only_what_is_queued():
    async def go():
        q = WindowQueue(8, lambda w, r: None)
        await q.put(_w("a", 0), live=True)
        return len(await asyncio.wait_for(q.get_batch(4), 5))
    assert asyncio.run(go()) == 1


def test_discard_stream_takes_out_only_that_streams_windows():
    async def go():
        q = WindowQueue(8, lambda w, r: None)
        for s, i in [("a", 0), ("b", 0), ("a", 1), ("b", 1)]:
            await q.put(_w(s, i), live=True)
        gone = q.discard_stream("a")
        return [(w.stream, w.index) for w in gone], [(w.stream, w.index) for w in await q.get_batch(8)]
    assert asyncio.run(go()) == ([("a", 0), ("a", 1)], [("b", 0), ("b", 1)])


def test_queue_holds_per_stream_windows_of_every_stream_using_the_engine():
    """16 streams' windows falling due at once fit a queue sized from the streams, none dropped;
    the configured size is the floor."""
    async def go(n_streams):
        dropped = []
        streams = [n_streams]
        q = WindowQueue(8, lambda w, r: dropped.append(w), per_stream=2, streams=lambda: streams[0])
        for i in range(n_streams):
            await q.put(_w(f"s{i}", 0), live=True)
        return q.maxsize, len(q), len(dropped)
    assert asyncio.run(go(16)) == (32, 16, 0)
    assert asyncio.run(go(2))[0] == 8


def test_full_queue_drops_from_the_stream_with_most_waiting_never_a_lone_window():
    async def go():
        dropped = []
        q = WindowQueue(4, lambda w, r: dropped.append((w.stream, w.index)))
        for stream, i in [("a", 0), ("b", 0), ("b", 1), ("c", 0)]:
            await q.put(_w(stream, i), live=True)
        await q.put(_w("d", 0), live=True)  # d has nothing waiting: b (two waiting) gives its oldest
        await q.put(_w("a", 1), live=True)  # a has one waiting: its own older window goes
        order = [(w.stream, w.index) for w in await q.get_batch(10)]
        return dropped, order
    dropped, order = asyncio.run(go())
    assert dropped == [("b", 0), ("a", 0)]
    assert order == [("b", 1), ("c", 0), ("d", 0), ("a", 1)]
    # every stream keeps its windows in order and still has one waiting
    assert {s for s, _ in order} == {"a", "b", "c", "d"}
