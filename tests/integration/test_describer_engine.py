"""The scene-describer engine on real frames with the committed detector: each frame detected once
across overlapping windows, the cut and camera checks on real pictures, the protocol's keywords."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamcap.engine.base import CaptionEngine, load_engine
from streamcap.engine.describer import DescriberEngine, picture_motion, thumbnail
from streamcap.runtime.config import DEFAULT_DESCRIBER

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def frames(vtest_path) -> list[np.ndarray]:
    """vtest.avi's first 6 s, RGB at the describer's 416x416."""
    cap = cv2.VideoCapture(str(vtest_path))
    out = []
    for _ in range(60):
        ok, f = cap.read()
        assert ok
        out.append(cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), (416, 416), interpolation=cv2.INTER_AREA))
    return out


@pytest.fixture(scope="module")
def engine() -> DescriberEngine:
    e = load_engine(DEFAULT_DESCRIBER, intra_op_threads=2)
    assert isinstance(e, DescriberEngine) and isinstance(e, CaptionEngine)
    return e


def test_overlapping_windows_detect_each_frame_once(engine, frames) -> None:
    calls = []
    detect = engine.detector.detect_batch
    engine.detector.detect_batch = lambda fs: calls.append(len(fs)) or detect(fs)
    try:
        engine.cache.clear()
        hits0, misses0 = engine.cache.hits, engine.cache.misses
        # windows a stride (0.5 s = 5 frames) apart, 4 frames 0.5 s apart: 3 of 4 frames shared
        windows = [[s + 2 + 5 * i for i in range(4)] for s in range(0, 30, 5)]
        for idx in windows:
            r = engine.caption_batch([[frames[i] for i in idx]], keys=[[("cam", i) for i in idx]], aspect=4 / 3)[0]
            assert any(o.label == "person" for o in r.objects), r.text
        distinct = len({i for w in windows for i in w})
        assert sum(calls) == distinct == 4 + 5  # the first window's 4, then one new frame per window
        assert engine.cache.misses - misses0 == distinct
        assert engine.cache.hits - hits0 == 4 * len(windows) - distinct
        # one batch of windows shares its frames too
        calls.clear()
        engine.cache.clear()
        engine.caption_batch([[frames[i] for i in w] for w in windows[:3]],
                             keys=[[("cam", i) for i in w] for w in windows[:3]], num_beams=4, prompt="ignored")
        assert sum(calls) == len({i for w in windows[:3] for i in w})
    finally:
        engine.detector.detect_batch = detect


def test_the_same_window_gives_the_same_description_cached_or_not(engine, frames) -> None:
    idx = [10, 15, 20, 25]
    engine.cache.clear()
    fresh = engine.caption_batch([[frames[i] for i in idx]], keys=[[("a", i) for i in idx]])[0]
    cached = engine.caption_batch([[frames[i] for i in idx]], keys=[[("a", i) for i in idx]])[0]
    hashed = engine.caption_batch([[frames[i] for i in idx]])[0]  # no keys: content hashes
    assert fresh == cached == hashed
    assert fresh.key and fresh.objects and fresh.text


def test_picture_motion_finds_a_pan_and_a_cut_and_leaves_its_inputs_alone(frames) -> None:
    a = thumbnail(frames[0])
    before = a.copy()
    assert picture_motion(a, thumbnail(frames[3])) == (0.0, 0.0, False)  # a fixed camera
    # a pan: the picture slides 8 % of its width to the left
    big = cv2.resize(frames[0], (520, 416))
    left, right = thumbnail(np.ascontiguousarray(big[:, 40:456])), thumbnail(np.ascontiguousarray(big[:, 0:416]))
    dx, dy, cut = picture_motion(right, left)
    assert not cut and dx < -0.05 and abs(dy) < 0.02
    # a cut: another picture altogether
    other = thumbnail(np.ascontiguousarray(frames[0][::-1, ::-1] // 3))
    assert picture_motion(a, other)[2]
    assert np.array_equal(a, before)


def test_a_cut_inside_the_window_describes_only_the_new_scene(engine, frames) -> None:
    dark = np.zeros_like(frames[0])
    dark[:] = (40, 60, 30)
    r = engine.caption_batch([[frames[0], frames[5], dark, dark]])[0]
    assert not any(o.label == "person" for o in r.objects), r.text
    r = engine.caption_batch([[dark, dark, dark, frames[5]]])[0]
    assert r.text.startswith("new scene: ") and all(o.motion == "unknown" for o in r.objects), r.text
