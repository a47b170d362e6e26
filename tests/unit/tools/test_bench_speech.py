"""tools/bench_speech.py's pure parts: the streaming load's buffers, the streams' audio, capacity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.bench_speech import buffer_schedule, capacity, speech_streams


def test_buffer_grows_a_step_per_call_and_is_cut_back_past_the_maximum():
    schedule = buffer_schedule(13, step_s=1.0, max_buffer_s=10.0)
    lengths = [end - start for start, end, _cut in schedule]
    assert lengths == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3]
    assert [end for _s, end, _c in schedule] == list(range(1, 14))
    assert [k for k, (_s, _e, cut) in enumerate(schedule) if cut] == [10]
    with pytest.raises(ValueError):
        buffer_schedule(3, step_s=2.0, max_buffer_s=1.0)


def test_each_stream_starts_at_another_sentence_and_wraps():
    speech = np.arange(100, dtype=np.float32)
    streams = speech_streams(speech, [0, 25, 50, 75], 2, 60)
    assert streams[0][0] == 0 and streams[1][0] == 50
    assert streams[1][49] == 99 and streams[1][50] == 0  # wrapped around
    assert all(len(s) == 60 for s in streams)


def test_capacity_measured_and_fitted_from_median_call_times():
    cap = capacity({1: 0.4, 2: 0.7, 4: 1.3}, step_s=1.0)
    assert cap.measured == 2
    assert cap.per_stream_s == pytest.approx(0.3, abs=1e-3)
    assert cap.fixed_s == pytest.approx(0.1, abs=1e-3)
    assert cap.fitted == pytest.approx(3.0, abs=0.01)
    assert capacity({1: 1.5}).measured == 0
    assert capacity({1: 0.5}).fitted == pytest.approx(2.0)
    assert math.isinf(capacity({1: 0.5, 2: 0.5}).fitted)
