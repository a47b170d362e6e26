import numpy as np
import pytest

from streamcap.core.ringbuffer import DROP_PTS_REGRESSION, DROP_RING_FULL, FrameRing, PushOutcome
from streamcap.core.types import DropPolicy, Frame

SHAPE = (8, 8, 3)


def frame(seq: int, pts_s: float | None = None, *, stream: str = "cam1", shape=SHAPE) -> Frame:
    image = np.full(shape, seq % 256, dtype=np.uint8)
    return Frame(stream=stream, seq=seq, capture_ns=1_000_000 * seq,
                 pts_s=seq * 0.1 if pts_s is None else pts_s, image=image)


def filled(n: int, capacity: int = 4, policy: DropPolicy = DropPolicy.DROP_OLDEST) -> FrameRing:
    ring = FrameRing(capacity, SHAPE, policy)
    for i in range(n):
        ring.push(frame(i))
    return ring


def test_push_stores_frames_until_full():
    ring = filled(3)
    assert len(ring) == 3
    assert not ring.is_full
    assert ring.push(frame(3)).outcome is PushOutcome.STORED
    assert ring.is_full
    assert ring.drops == {}


def test_drop_oldest_counts_dropped_frame_when_full():
    ring = filled(4)
    result = ring.push(frame(4))
    assert result.stored and result.dropped
    assert result.outcome is PushOutcome.REPLACED_OLDEST
    assert result.reason == DROP_RING_FULL
    assert result.dropped_seq == 0
    assert ring.drops == {DROP_RING_FULL: 1}
    assert len(ring) == 4
    assert [f.seq for f in ring.frames_between(0, 10)] == [1, 2, 3, 4]


def test_block_refuses_push_when_full_without_counting_a_drop():
    ring = filled(4, policy=DropPolicy.BLOCK)
    result = ring.push(frame(4))
    assert not result.stored and not result.dropped
    assert result.outcome is PushOutcome.REFUSED_FULL
    assert ring.drops == {}
    assert [f.seq for f in ring.frames_between(0, 10)] == [0, 1, 2, 3]


def test_block_accepts_again_after_release():
    ring = filled(4, policy=DropPolicy.BLOCK)
    assert ring.release_before(0.2) == 2  # frames 0 and 1 older than 0.2; frame 2 is at 0.2
    assert ring.push(frame(4)).stored
    assert [f.seq for f in ring.frames_between(0, 10)] == [2, 3, 4]


def test_memory_stays_fixed_over_many_pushes():
    ring = FrameRing(5, SHAPE, DropPolicy.DROP_OLDEST)
    storage = ring._images  # the preallocated array must be the only image storage
    for i in range(1000):
        ring.push(frame(i))
    assert ring._images is storage
    assert storage.shape == (5, *SHAPE)
    assert len(ring) == 5
    assert ring.drops == {DROP_RING_FULL: 995}


def test_frame_of_other_shape_raises_value_error():
    ring = FrameRing(2, SHAPE, DropPolicy.DROP_OLDEST)
    with pytest.raises(ValueError, match="resize"):
        ring.push(frame(0, shape=(16, 16, 3)))
    assert len(ring) == 0


def test_frame_of_other_stream_raises_value_error():
    ring = filled(1)
    with pytest.raises(ValueError, match="stream"):
        ring.push(frame(1, stream="cam2"))


def test_invalid_construction_raises_value_error():
    with pytest.raises(ValueError):
        FrameRing(0, SHAPE, DropPolicy.BLOCK)
    with pytest.raises(ValueError):
        FrameRing(2, (8, 8), DropPolicy.BLOCK)
    with pytest.raises(ValueError):
        FrameRing(2, SHAPE, "sometimes")


def test_pts_going_backwards_is_discarded_and_counted():
    ring = filled(3)
    result = ring.push(frame(9, pts_s=0.05))
    assert not result.stored
    assert result.outcome is PushOutcome.DISCARDED
    assert result.dropped_seq == 9
    assert ring.drops == {DROP_PTS_REGRESSION: 1}
    assert len(ring) == 3


def test_frames_returned_do_not_alias_ring_slots():
    ring = filled(2, capacity=2)
    kept = ring.nearest(0.0)
    assert kept is not None and kept.seq == 0
    for i in range(2, 6):  # overwrite every slot
        ring.push(frame(i))
    assert int(kept.image[0, 0, 0]) == 0
    kept.image[...] = 77
    assert all(int(f.image[0, 0, 0]) != 77 for f in ring.frames_between(0, 10))


def test_pushed_image_is_copied_in():
    ring = FrameRing(2, SHAPE, DropPolicy.DROP_OLDEST)
    f = frame(3)
    ring.push(f)
    f.image[...] = 200
    got = ring.nearest(0.3)
    assert got is not None and int(got.image.max()) == 3


def test_frames_between_is_inclusive_and_ordered():
    ring = filled(8, capacity=8)
    assert [f.seq for f in ring.frames_between(0.2, 0.5)] == [2, 3, 4, 5]
    assert ring.frames_between(5.0, 6.0) == []


def test_frames_between_after_wraparound_keeps_pts_order():
    ring = filled(11, capacity=4)
    frames = ring.frames_between(0.0, 2.0)
    assert [f.seq for f in frames] == [7, 8, 9, 10]
    assert [f.pts_s for f in frames] == sorted(f.pts_s for f in frames)


def test_nearest_picks_closest_and_earlier_on_tie():
    ring = filled(4)
    assert ring.nearest(0.14).seq == 1
    assert ring.nearest(0.16).seq == 2
    assert ring.nearest(0.15).seq == 1  # tie: the earlier frame
    assert ring.nearest(-5).seq == 0
    assert ring.nearest(99).seq == 3


def test_nearest_on_empty_ring_is_none():
    ring = FrameRing(3, SHAPE, DropPolicy.DROP_OLDEST)
    assert ring.nearest(1.0) is None
    assert ring.latest_pts_s is None
    assert ring.latest_capture_ns is None


def test_latest_reports_newest_frame():
    ring = filled(6)
    assert ring.latest_pts_s == pytest.approx(0.5)
    assert ring.latest_capture_ns == 5_000_000
    assert ring.oldest_pts_s == pytest.approx(0.2)


def test_release_before_keeps_newest_older_frame_as_anchor():
    ring = filled(6, capacity=8)
    freed = ring.release_before(0.25)  # 0.2 may still be nearest to 0.25
    assert freed == 2
    assert [f.seq for f in ring.frames_between(0, 10)] == [2, 3, 4, 5]
    assert ring.nearest(0.25).seq == 2


def test_release_before_everything_keeps_last_frame():
    ring = filled(4)
    assert ring.release_before(100.0) == 3
    assert len(ring) == 1
    assert ring.release_before(float("-inf")) == 0


def test_clear_forgets_frames_but_keeps_drop_counts():
    ring = filled(5)
    ring.clear()
    assert len(ring) == 0
    assert ring.drops == {DROP_RING_FULL: 1}
    assert ring.push(frame(0)).stored  # an earlier pts is fine after a clear
