"""The pure media clock: container pts in, trustworthy media time (and counted discontinuities) out."""

import math

import numpy as np
import pytest

from streamcap.core.mediaclock import DEFAULT_STEP_S, MediaClock
from streamcap.core.types import DropReason

NS = 1_000_000_000


def feed(clock, pts, wall_s=None):
    """Place frames with container times ``pts`` received at ``wall_s`` (default: all at once,
    as a file decodes); return (media times, discontinuities)."""
    wall_s = [0.0] * len(pts) if wall_s is None else wall_s
    placed = [clock.place(p, round(w * NS)) for p, w in zip(pts, wall_s, strict=True)]
    return [p.media_s for p in placed], [p.discontinuity for p in placed]


def test_a_file_follows_its_pts_from_zero():
    clock = MediaClock(live=False, nominal_fps=10)
    media, reports = feed(clock, [5.0 + i / 10 for i in range(50)])
    np.testing.assert_allclose(media, np.arange(50) / 10, atol=1e-9)
    assert reports == [None] * 50


def test_a_file_jump_of_a_billion_seconds_is_rebased_to_one_frame_later_and_reported_once():
    clock = MediaClock(live=False, nominal_fps=10)
    pts = [i / 10 for i in range(30)] + [1e9 + i / 10 for i in range(30)]
    media, reports = feed(clock, pts)
    np.testing.assert_allclose(media, np.arange(60) / 10, atol=1e-6)
    assert reports.count(DropReason.PTS_JUMP) == 1 and reports[30] is DropReason.PTS_JUMP
    assert clock.discontinuities == 1


def test_a_file_gap_within_the_limit_is_a_real_gap_and_not_reported():
    clock = MediaClock(live=False, nominal_fps=10)
    assert clock.max_jump_s == 2.0  # max(2 s, 10 frame intervals)
    media, reports = feed(clock, [0.0, 0.1, 1.9, 2.0])
    assert media == pytest.approx([0.0, 0.1, 1.9, 2.0])
    assert reports == [None] * 4


def test_the_file_jump_limit_grows_with_the_frame_interval():
    assert MediaClock(live=False, nominal_fps=1).max_jump_s == 10.0
    assert MediaClock(live=False, nominal_fps=10, max_jump_s=0.5).max_jump_s == 0.5


def test_a_rewind_keeps_the_frames_on_a_rebased_time_and_is_reported():
    # defect 13: 8 s of frames, then the encoder restarts at 4 s
    clock = MediaClock(live=False, nominal_fps=10)
    pts = [i / 10 for i in range(81)] + [4.0 + i / 10 for i in range(40)]
    media, reports = feed(clock, pts)
    assert len(media) == 121  # nothing dropped
    assert np.all(np.diff(media) > 0)
    assert media[81] == pytest.approx(8.1) and media[-1] == pytest.approx(12.0)
    assert reports[81] is DropReason.PTS_REWIND and reports.count(DropReason.PTS_REWIND) == 1
    assert all(r is None for r in reports[:81] + reports[82:])


def test_a_repeated_or_slightly_earlier_pts_is_nudged_forward_without_a_report():
    clock = MediaClock(live=False, nominal_fps=10)
    media, reports = feed(clock, [0.0, 0.1, 0.1, 0.09, 0.3])
    assert np.all(np.diff(media) > 0)
    assert media[2] == pytest.approx(0.101) and media[3] == pytest.approx(0.102)
    assert media[4] == pytest.approx(0.3)
    assert reports == [None] * 5


def test_frames_without_pts_advance_one_frame_interval_in_a_file():
    clock = MediaClock(live=False, nominal_fps=25)
    media, _ = feed(clock, [None, None, None])
    assert media == pytest.approx([0.0, 0.04, 0.08])
    unknown = MediaClock(live=False, nominal_fps=0)
    assert feed(unknown, [None, None])[0] == pytest.approx([0.0, DEFAULT_STEP_S])


def test_non_finite_pts_count_as_missing():
    clock = MediaClock(live=False, nominal_fps=10)
    media, reports = feed(clock, [0.0, math.nan, math.inf])
    assert media == pytest.approx([0.0, 0.1, 0.2]) and reports == [None] * 3


def test_a_live_jump_is_bounded_by_the_wall_time_received():
    clock = MediaClock(live=True, nominal_fps=10, live_slack_s=0.5)
    pts = [0.0, 0.1, 0.2, 3600.3, 3600.4]
    wall = [0.0, 0.1, 0.2, 0.3, 0.4]
    media, reports = feed(clock, pts, wall)
    assert media == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert reports == [None, None, None, DropReason.PTS_JUMP, None]


def test_a_live_gap_that_really_passed_is_kept():
    clock = MediaClock(live=True, nominal_fps=10, live_slack_s=0.5)
    media, reports = feed(clock, [0.0, 0.1, 10.1], [0.0, 0.1, 10.1])
    assert media == pytest.approx([0.0, 0.1, 10.1]) and reports == [None] * 3


def test_a_live_burst_within_the_slack_follows_the_pts():
    clock = MediaClock(live=True, nominal_fps=10, live_slack_s=0.5)
    media, reports = feed(clock, [0.0, 0.1, 0.2, 0.3], [0.0, 1.0, 1.001, 1.002])
    assert media == pytest.approx([0.0, 0.1, 0.2, 0.3]) and reports == [None] * 4


def test_a_live_stream_without_pts_follows_the_wall_clock():
    clock = MediaClock(live=True)
    media, _ = feed(clock, [None, None, None], [5.0, 5.25, 5.25])
    assert media == pytest.approx([0.0, 0.25, 0.251])


def test_a_reconnected_live_stream_resumes_at_the_wall_time_elapsed():
    clock = MediaClock(live=True, nominal_fps=10)
    feed(clock, [10.0, 10.1, 10.2], [100.0, 100.1, 100.2])
    clock.new_segment()
    media, reports = feed(clock, [0.0, 0.1], [105.0, 105.1])  # the camera restarted its clock
    assert media == pytest.approx([5.0, 5.1]) and reports == [None, None]
    clock.new_segment()  # a reconnect at once still moves one frame interval on
    assert clock.place(50.0, round(105.1 * NS)).media_s == pytest.approx(5.2)


def test_media_time_is_strictly_increasing_whatever_the_container_says():
    rng = np.random.default_rng(7)
    for live in (False, True):
        clock = MediaClock(live=live, nominal_fps=30)
        wall = np.cumsum(rng.uniform(0, 0.1, 2000))
        pts = [None if rng.random() < 0.05 else float(x)
               for x in rng.choice([-1e9, -5.0, 0.0, 1.0, 1e9], 2000) + np.arange(2000) / 30]
        media, _ = feed(clock, pts, wall.tolist())
        assert np.all(np.diff(media) > 0)
        assert media[-1] < 2000 * 0.6  # bounded by what was received, not by the container


@pytest.mark.parametrize("kwargs", [{"live_slack_s": -1}, {"min_step_s": 0}, {"max_jump_s": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        MediaClock(live=False, **kwargs)
