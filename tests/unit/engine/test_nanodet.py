"""NanoDet pre/post-processing (streamcap.engine.nanodet) on hand-made tensors: a box decoded from
known distance bins lands where the arithmetic says, NMS suppresses overlaps within a class only,
the score threshold and the detection cap hold, and preprocessing reorders and normalises."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.engine import nanodet

INPUT = (416, 416)
REG_MAX = 10
STRIDES = (8, 16, 32)


def empty_levels(classes: int = 80) -> dict[int, nanodet.Level]:
    levels = {}
    for s in STRIDES:
        cells = (416 // s) ** 2
        levels[s] = nanodet.Level(s, np.zeros((cells, classes), np.float32),
                                  np.zeros((cells, 4 * (REG_MAX + 1)), np.float32))
    return levels


def put(level: nanodet.Level, row: int, col: int, cls: int, score: float, bins: tuple[int, int, int, int]) -> None:
    """A confident prediction at a cell: one-hot (very peaked) distributions at ``bins`` (l, t, r, b)."""
    cols = 416 // level.stride
    i = row * cols + col
    level.scores[i, cls] = score
    logits = np.full((4, REG_MAX + 1), -50.0, np.float32)
    for side, b in enumerate(bins):
        logits[side, b] = 50.0
    level.reg[i] = logits.ravel()


def decode(levels, threshold: float = 0.35, iou: float = 0.6, **kw) -> nanodet.Decoded:
    return nanodet.decode(list(levels.values()), input_size=INPUT, reg_max=REG_MAX,
                          score_threshold=threshold, nms_iou=iou, **kw)


def test_centre_points_are_row_major_cell_centres():
    c = nanodet.centre_points(2, 3, 32)
    assert c.tolist() == [[16, 16], [48, 16], [80, 16], [16, 48], [48, 48], [80, 48]]


def test_distances_are_the_expected_bin_of_each_side():
    logits = np.full((1, 4, REG_MAX + 1), -50.0, np.float32)
    logits[0, 0, 2] = logits[0, 1, 0] = logits[0, 2, 10] = 50.0
    logits[0, 3, 3] = logits[0, 3, 4] = 50.0  # two equal bins: their mean
    np.testing.assert_allclose(nanodet.distances(logits.reshape(1, -1), REG_MAX), [[2, 0, 10, 3.5]], atol=1e-5)


def test_decoded_box_lands_at_centre_minus_and_plus_distances_times_stride():
    levels = empty_levels()
    put(levels[32], row=3, col=5, cls=0, score=0.9, bins=(2, 1, 3, 4))
    d = decode(levels)
    cx, cy = 5.5 * 32, 3.5 * 32
    expected = np.array([cx - 64, cy - 32, cx + 96, cy + 128]) / 416
    assert d.labels.tolist() == [0]
    np.testing.assert_allclose(d.scores, [0.9], rtol=1e-6)
    np.testing.assert_allclose(d.boxes[0], expected, atol=1e-5)


def test_boxes_are_clipped_to_the_frame():
    levels = empty_levels()
    put(levels[16], row=0, col=0, cls=2, score=0.8, bins=(10, 10, 1, 1))
    d = decode(levels)
    assert d.boxes[0, 0] == 0.0 and d.boxes[0, 1] == 0.0
    np.testing.assert_allclose(d.boxes[0, 2:], [(8 + 16) / 416, (8 + 16) / 416], atol=1e-5)


def test_scores_at_or_below_threshold_are_dropped():
    levels = empty_levels()
    put(levels[8], row=10, col=10, cls=0, score=0.35, bins=(1, 1, 1, 1))
    put(levels[8], row=30, col=30, cls=0, score=0.36, bins=(1, 1, 1, 1))
    d = decode(levels, threshold=0.35)
    assert len(d.scores) == 1 and d.scores[0] == pytest.approx(0.36)


def test_nms_suppresses_an_overlapping_box_of_the_same_class():
    levels = empty_levels()
    put(levels[32], row=6, col=6, cls=0, score=0.9, bins=(3, 3, 3, 3))
    put(levels[32], row=6, col=7, cls=0, score=0.7, bins=(4, 3, 2, 3))  # the same box, one cell over
    put(levels[32], row=1, col=1, cls=0, score=0.5, bins=(1, 1, 1, 1))  # elsewhere: kept
    d = decode(levels)
    assert d.scores.tolist() == pytest.approx([0.9, 0.5])


def test_nms_is_class_aware():
    levels = empty_levels()
    put(levels[32], row=6, col=6, cls=0, score=0.9, bins=(3, 3, 3, 3))
    put(levels[32], row=6, col=6, cls=56, score=0.6, bins=(3, 3, 3, 3))  # same box, another class
    d = decode(levels)
    assert d.labels.tolist() == [0, 56]
    np.testing.assert_allclose(d.boxes[0], d.boxes[1])


def test_detections_are_sorted_by_score_and_capped():
    levels = empty_levels()
    for k in range(6):
        put(levels[8], row=4 + 8 * k, col=4, cls=k, score=0.4 + 0.1 * k, bins=(1, 1, 1, 1))
    d = decode(levels, max_detections=4)
    assert d.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert d.labels.tolist() == [5, 4, 3, 2]


def test_no_candidate_gives_empty_arrays():
    d = decode(empty_levels())
    assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.labels.shape == (0,)


def test_a_level_whose_cell_count_does_not_match_its_stride_is_refused():
    bad = nanodet.Level(32, np.zeros((100, 80), np.float32), np.zeros((100, 44), np.float32))
    with pytest.raises(ValueError, match="stride 32"):
        nanodet.decode([bad], input_size=INPUT, reg_max=REG_MAX, score_threshold=0.3, nms_iou=0.6)


def test_nms_keeps_boxes_below_the_iou_threshold():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 12], [5, 0, 15, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    # IoU(0,1) = 100/120 = 0.83 (suppressed at 0.6); IoU(0,2) = 50/150 = 0.33 (kept)
    assert nanodet.nms(boxes, scores, 0.6).tolist() == [0, 2]
    assert nanodet.nms(boxes, scores, 0.9).tolist() == [0, 1, 2]


def test_preprocess_resizes_reorders_to_bgr_and_normalises():
    frame = np.zeros((90, 160, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # R, G, B
    x = nanodet.preprocess(frame, input_size=(416, 416), mean=(103.53, 116.28, 123.675),
                           std=(57.375, 57.12, 58.395), colour="BGR")
    assert x.shape == (3, 416, 416) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 200, 200], [(30 - 103.53) / 57.375, (20 - 116.28) / 57.12,
                                                (10 - 123.675) / 58.395], rtol=1e-5)


def test_preprocess_refuses_a_grey_frame():
    with pytest.raises(ValueError, match="RGB"):
        nanodet.preprocess(np.zeros((10, 10), np.uint8), input_size=(416, 416), mean=(0, 0, 0), std=(1, 1, 1))
