"""PyAV's decoder keeps (converts to RGB) at most max_fps frames a second of their time, by the
processor's own rule, per connection."""

import pytest

from streamcap.sources.pyav import FrameThinning


def test_30fps_thinned_to_10_keeps_every_third_frame():
    thin = FrameThinning(10.0)
    kept = [i for i in range(90) if thin.keep(1, i / 30)]
    assert kept == list(range(0, 90, 3))


def test_frames_without_time_are_kept_and_a_reconnect_or_a_time_going_back_starts_afresh():
    thin = FrameThinning(10.0)
    assert thin.keep(1, 5.0) and not thin.keep(1, 5.05)
    assert thin.keep(1, None)
    assert thin.keep(2, 5.05)  # a new connection
    assert thin.keep(2, 1.0)  # time went back (a new segment): kept
    assert not thin.keep(2, 1.02)


@pytest.mark.parametrize("fps", [5.0, 10.0, 25.0])
def test_the_rule_matches_the_processor_s_sub_sampling(fps):
    # the processor skips a frame closer than 1/fps - 1 ms to the last kept one
    thin = FrameThinning(fps)
    times = [i * 0.01 for i in range(1000)]
    kept, last = [], None
    for t in times:
        if last is None or t - last >= 1 / fps - 1e-3:
            kept.append(t)
            last = t
    assert [t for t in times if thin.keep(1, t)] == kept


def test_rgb_size_scales_large_frames_to_the_engine_s_side_keeping_the_aspect():
    from streamcap.sources.pyav import rgb_size

    assert rgb_size(1920, 1080, 416) == {"format": "rgb24", "width": 740, "height": 416, "interpolation": "AREA"}
    assert rgb_size(1080, 1920, 416)["width"] == 416  # portrait: the width is the short side
    assert rgb_size(320, 240, 416) == {"format": "rgb24"}  # never enlarged
    assert rgb_size(768, 576, 416) == {"format": "rgb24"}  # less than twice the side: as before
    assert rgb_size(1920, 1080, None) == {"format": "rgb24"}
