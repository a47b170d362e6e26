import math

import numpy as np
import pytest

from streamcap.core.ringbuffer import FrameRing
from streamcap.core.types import DropPolicy, Frame
from streamcap.core.windowing import (
    WindowPlanner,
    WindowSpec,
    build_window,
    min_ring_capacity,
    pick_frames,
)


def frame(seq: int, pts_s: float) -> Frame:
    return Frame("cam1", seq, seq * 1000, pts_s, np.full((4, 4, 3), seq % 256, np.uint8))


def test_first_window_is_due_once_a_frame_reaches_its_end():
    planner = WindowPlanner(3.0, 1.0, 6)
    assert planner.due(0.0) == []
    assert planner.due(2.9) == []
    assert planner.due(3.0) == [WindowSpec(0, 0.0, 3.0)]
    assert planner.due(3.05) == []


def test_windows_are_handed_out_in_order_and_once():
    planner = WindowPlanner(3.0, 1.0, 6)
    for pts in (0.0, 1.0, 2.0):
        assert planner.due(pts) == []
    due = planner.due(5.5)
    assert [w.index for w in due] == [0, 1, 2]
    assert [(w.start_s, w.end_s) for w in due] == [(0.0, 3.0), (1.0, 4.0), (2.0, 5.0)]
    assert [w.index for w in planner.due(6.0)] == [3]


def test_t0_is_the_first_pts_seen():
    planner = WindowPlanner(2.0, 0.5, 4)
    planner.due(10.0)
    assert planner.t0_s == 10.0
    assert planner.due(12.0) == [WindowSpec(0, 10.0, 12.0)]


def test_frame_clock_rounding_still_closes_the_window():
    planner = WindowPlanner(3.0, 1.0, 6)
    planner.due(0.0)
    # 29 * (1/10) + 1/10 lands a few ulps away from 3.0
    pts = sum([0.1] * 30)
    assert pts != 3.0
    assert [w.index for w in planner.due(pts)] == [0]


def test_window_grid_does_not_drift_over_a_long_stream():
    planner = WindowPlanner(3.0, 0.1, 6, max_backlog=1)
    planner.due(0.0)
    (last,) = planner.due(100_003.0)
    assert last.index == 1_000_000
    assert last.start_s == pytest.approx(100_000.0, abs=1e-6)
    assert last.end_s == pytest.approx(100_003.0, abs=1e-6)


def test_live_backlog_skips_older_windows_and_counts_them():
    planner = WindowPlanner(3.0, 1.0, 6, max_backlog=1)
    planner.due(0.0)
    assert [w.index for w in planner.due(3.0)] == [0]
    assert [w.index for w in planner.due(4.0)] == [1]
    due = planner.due(8.0)  # windows 2..5 due at once (each holds the frame at 4 s or at 8 s)
    assert [w.index for w in due] == [5]
    assert planner.last_skipped == 3
    assert planner.skipped_total == 3
    assert planner.last_gap_skipped == 0
    assert [w.index for w in planner.due(9.0)] == [6]
    assert planner.last_skipped == 0
    assert planner.skipped_total == 3


def test_file_planner_never_skips():
    planner = WindowPlanner(3.0, 1.0, 6, max_backlog=None)
    handed = [w.index for pts in range(51) for w in planner.due(float(pts))]
    assert handed == list(range(48))
    assert planner.skipped_total == 0


def test_windows_wholly_inside_a_gap_between_frames_are_skipped_and_counted():
    planner = WindowPlanner(3.0, 1.0, 6)
    for pts in (0.0, 1.0, 2.0, 3.0):
        planner.due(pts)
    assert planner.next_index == 1
    due = planner.due(10.0)  # nothing between 3 s and 10 s
    # windows 1..3 hold the frame at 3 s, window 7 ends on the frame at 10 s; 4..6 saw nothing
    assert [w.index for w in due] == [1, 2, 3, 7]
    assert planner.last_gap_skipped == 3 and planner.gap_skipped_total == 3
    assert planner.last_skipped == 0
    assert planner.release_pts() == 8.0


def test_a_huge_timestamp_jump_costs_a_bounded_number_of_windows():
    planner = WindowPlanner(2.0, 0.5, 6)
    for i in range(20):
        planner.due(i * 0.1)
    due = planner.due(1e9)
    assert len(due) <= 2.0 / 0.5 + 2
    assert planner.last_gap_skipped > 1e9
    assert due[-1].end_s == pytest.approx(1e9, abs=1e-6)
    assert [w.index for w in planner.due(1e9 + 0.5)] == [due[-1].index + 1]


@pytest.mark.parametrize("pts", [math.inf, -math.inf, math.nan, 1e300, -2e10])
def test_media_times_that_are_not_finite_or_absurd_are_refused(pts):
    planner = WindowPlanner(2.0, 0.5, 6)
    planner.due(0.0)
    with pytest.raises(ValueError, match="finite and within"):
        planner.due(pts)


def test_sample_targets_are_evenly_spaced_including_both_ends():
    planner = WindowPlanner(3.0, 1.0, 6)
    targets = planner.sample_targets(WindowSpec(2, 2.0, 5.0))
    assert targets == pytest.approx([2.0, 2.6, 3.2, 3.8, 4.4, 5.0])


def test_release_pts_is_start_of_next_window():
    planner = WindowPlanner(3.0, 1.0, 6)
    assert planner.release_pts() == -math.inf
    planner.due(0.5)
    assert planner.release_pts() == 0.5
    planner.due(4.5)
    assert planner.release_pts() == pytest.approx(2.5)


def test_pick_frames_chooses_nearest_frame_per_target():
    frames = [frame(i, i * 0.1) for i in range(31)]
    picked = pick_frames(frames, [0.0, 0.62, 1.19, 3.0])
    assert [f.seq for f in picked] == [0, 6, 12, 30]


def test_pick_frames_repeats_frames_when_source_is_slow():
    frames = [frame(0, 0.0), frame(1, 2.0)]  # 0.5 fps source
    picked = pick_frames(frames, [0.0, 0.6, 1.2, 1.8, 2.4, 3.0])
    assert [f.seq for f in picked] == [0, 0, 1, 1, 1, 1]


def test_pick_frames_from_ring_returns_copies():
    ring = FrameRing(40, (4, 4, 3), DropPolicy.DROP_OLDEST)
    for i in range(31):
        ring.push(frame(i, i * 0.1))
    planner = WindowPlanner(3.0, 1.0, 6)
    planner.due(0.0)
    (spec,) = planner.due(3.0)
    picked = pick_frames(ring, planner.sample_targets(spec))
    assert [f.seq for f in picked] == [0, 6, 12, 18, 24, 30]
    assert [int(f.image[0, 0, 0]) for f in picked] == [0, 6, 12, 18, 24, 30]


def test_pick_frames_from_empty_source_raises():
    with pytest.raises(ValueError):
        pick_frames([], [1.0])
    with pytest.raises(ValueError):
        pick_frames(FrameRing(2, (4, 4, 3), DropPolicy.BLOCK), [1.0])


def test_ring_released_to_planner_pts_still_serves_next_window():
    ring = FrameRing(min_ring_capacity(3.0, 10.0), (4, 4, 3), DropPolicy.BLOCK)
    planner = WindowPlanner(3.0, 1.0, 6)
    windows = []
    for i in range(61):
        assert ring.push(frame(i, i * 0.1)).stored, f"ring full at frame {i}"
        for spec in planner.due(ring.latest_pts_s):
            windows.append(build_window("cam1", spec, pick_frames(ring, planner.sample_targets(spec))))
        ring.release_before(planner.release_pts())
    assert [w.index for w in windows] == list(range(4))
    assert [f.seq for f in windows[3].frames] == [30, 36, 42, 48, 54, 60]


def test_build_window_carries_spec_times_and_frames():
    frames = [frame(i, i * 0.5) for i in range(3)]
    window = build_window("cam1", WindowSpec(7, 0.0, 1.0), frames)
    assert (window.stream, window.index, window.start_s, window.end_s) == ("cam1", 7, 0.0, 1.0)
    assert window.frames == tuple(frames)
    assert window.newest_capture_ns == 2000
    with pytest.raises(ValueError):
        build_window("cam1", WindowSpec(7, 0.0, 1.0), [])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window_s": 0, "stride_s": 1, "frames_per_window": 6}, "window_s"),
        ({"window_s": -1, "stride_s": 1, "frames_per_window": 6}, "window_s"),
        ({"window_s": 3, "stride_s": 0, "frames_per_window": 6}, "stride_s"),
        ({"window_s": 3, "stride_s": math.nan, "frames_per_window": 6}, "stride_s"),
        ({"window_s": 3, "stride_s": 1, "frames_per_window": 1}, "frames_per_window"),
        ({"window_s": 3, "stride_s": 1, "frames_per_window": 6, "max_backlog": 0}, "max_backlog"),
    ],
)
def test_invalid_arguments_raise_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowPlanner(**kwargs)


def test_grid_sampling_puts_frames_on_a_grid_that_consecutive_windows_share() -> None:
    from streamcap.core.windowing import WindowPlanner

    planner = WindowPlanner(2.0, 0.5, 4, sampling="grid")
    frames = [Frame("s", i, i, i / 10, np.zeros((2, 2, 3), np.uint8)) for i in range(80)]
    picked = []
    for f in frames:
        for spec in planner.due(f.pts_s):
            targets = planner.sample_targets(spec)
            assert targets[-1] == pytest.approx(spec.end_s)  # the newest frame is the window's end
            assert [b - a for a, b in zip(targets, targets[1:])] == pytest.approx([0.5] * 3)
            picked.append([fr.seq for fr in pick_frames(frames[: f.seq + 1], targets)])
    assert len(picked) > 10
    for a, b in zip(picked, picked[1:]):
        assert a[1:] == b[:-1]  # 3 of 4 frames shared with the next window: each frame is new once
    with pytest.raises(ValueError, match="sampling"):
        WindowPlanner(2.0, 0.5, 4, sampling="random")


@pytest.mark.parametrize("fps,t0", [(10.0, 0.0), (10.0, 3.7), (30.0, 12.34), (25.0, 0.0)])
def test_aligned_sampling_keeps_the_trained_spacing_and_reuses_k_minus_2_frames(fps, t0) -> None:
    """The caption models' default (window 2 s, stride 0.5 s, K = 6): frames window/(K-1) apart,
    both ends, on the stream's grid; a window is due as soon as its last frame is in; each window
    brings at most 2 new frames, so a per-frame cache hits at least (K-2)/K of its lookups."""
    k, window_s, stride_s = 6, 2.0, 0.5
    step = window_s / (k - 1)
    planner = WindowPlanner(window_s, stride_s, k, sampling="aligned")
    ring = FrameRing(min_ring_capacity(window_s + stride_s, fps) + 2, (4, 4, 3), DropPolicy.BLOCK)
    frames = [frame(i, t0 + i / fps) for i in range(int(60 * fps))]
    seen: set[int] = set()
    hits = lookups = windows = 0
    previous_pts = None
    for f in frames:
        assert ring.push(f).stored
        for spec in planner.due(f.pts_s):
            assert spec.end_s <= f.pts_s + 1e-6
            assert previous_pts is None or spec.end_s > previous_pts + 1e-6  # due at its last frame, not later
            nominal_end = t0 + spec.index * stride_s + window_s
            assert nominal_end - step - 1e-9 < spec.end_s <= nominal_end + 1e-9
            assert spec.end_s - spec.start_s == pytest.approx(window_s)
            targets = planner.sample_targets(spec)
            assert targets[0] == pytest.approx(spec.start_s) and targets[-1] == pytest.approx(spec.end_s)
            assert [b - a for a, b in zip(targets, targets[1:])] == pytest.approx([step] * (k - 1))
            got = [fr.seq for fr in pick_frames(ring, targets)]
            # the ring released nothing a window needed: the same frames as from all of them
            assert got == [fr.seq for fr in pick_frames(frames[: f.seq + 1], targets)]
            new = [s for s in got if s not in seen]
            assert windows == 0 or len(new) <= 2
            hits += k - len(new)
            lookups += k
            windows += 1
            seen.update(got)
        ring.release_before(planner.release_pts())
        previous_pts = f.pts_s
    assert windows >= 110
    assert hits / lookups >= (k - 2) / k
    # span sampling at the same stride shares almost nothing: the reason for aligned
    span = WindowPlanner(window_s, stride_s, k)
    seen.clear()
    span_hits = 0
    for f in frames:
        for spec in span.due(f.pts_s):
            got = [fr.seq for fr in pick_frames(frames[: f.seq + 1], span.sample_targets(spec))]
            span_hits += sum(s in seen for s in got)
            seen.update(got)
    assert span_hits / lookups < 0.5


def test_aligned_windows_keep_their_order_and_skip_like_any_other() -> None:
    planner = WindowPlanner(2.0, 0.5, 6, sampling="aligned", max_backlog=2)
    planner.due(5.0)
    ends = [s.end_s for s in planner.due(7.0)]
    assert ends == pytest.approx([7.0])  # window 0 ends on its nominal end, on the grid
    got = planner.due(9.9)  # a burst: only the newest two, older ones skipped and counted
    assert len(got) == 2 and planner.last_skipped > 0
    assert got[0].end_s < got[1].end_s <= 9.9
    assert planner.release_pts() == pytest.approx(planner.spec(planner.next_index).start_s)


def test_aligned_with_a_stride_below_the_grid_step_samples_the_span() -> None:
    """Windows 0.25 s apart on a 0.4 s grid would repeat grid ends (the same frames twice)."""
    planner = WindowPlanner(2.0, 0.25, 6, sampling="aligned")
    assert planner.sampling == "span"
    planner.due(0.0)
    ends = [s.end_s for s in planner.due(4.0)]
    assert len(set(ends)) == len(ends)
    assert WindowPlanner(2.0, 0.4, 6, sampling="aligned").sampling == "aligned"
