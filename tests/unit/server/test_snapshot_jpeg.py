"""streamcap.server.snapshot: a frame (and the scene describer's objects) as JPEG bytes that decode
to the right size, with boxes drawn exactly where their normalised coordinates say, and nothing
drawn when there are no objects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamcap.core.types import SceneObject
from streamcap.server.snapshot import (
    MAX_WIDTH,
    MIN_WIDTH,
    box_label,
    box_pixels,
    render_snapshot,
    snapshot_size,
)

GREY = 90


def _decode(data: bytes) -> np.ndarray:
    """JPEG bytes → RGB uint8."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "not a decodable JPEG"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _flat(side: int = 224) -> np.ndarray:
    return np.full((side, side, 3), GREY, np.uint8)


def test_a_square_frame_without_options_decodes_to_its_own_size() -> None:
    data = render_snapshot(_flat(224))
    assert data[:2] == b"\xff\xd8"  # JPEG start of image
    assert _decode(data).shape == (224, 224, 3)


def test_the_picture_is_stretched_back_to_the_source_aspect_and_scaled_to_a_width() -> None:
    assert _decode(render_snapshot(_flat(224), aspect=320 / 240)).shape == (224, 299, 3)
    assert _decode(render_snapshot(_flat(224), width=640, aspect=16 / 9)).shape == (360, 640, 3)
    assert _decode(render_snapshot(_flat(416), width=100)).shape == (100, 100, 3)


def test_sizes_stay_within_bounds() -> None:
    assert snapshot_size((224, 224), width=10_000) == (MAX_WIDTH, MAX_WIDTH)
    assert snapshot_size((224, 224), width=1) == (MIN_WIDTH, 1)
    assert snapshot_size((224, 224), width=MIN_WIDTH, aspect=0.01)[1] <= 1920


def test_without_objects_nothing_is_drawn() -> None:
    picture = _decode(render_snapshot(_flat(224)))
    assert np.abs(picture.astype(int) - GREY).max() <= 2  # JPEG rounding only
    empty = SceneObject("person", 0, "still", ())
    assert np.abs(_decode(render_snapshot(_flat(224), [empty])).astype(int) - GREY).max() <= 2


def test_a_box_is_drawn_where_its_normalised_corners_are_and_nowhere_else() -> None:
    box = (0.25, 0.5, 0.75, 0.9)
    image = _flat(224)
    plain = _decode(render_snapshot(image))
    drawn = _decode(render_snapshot(image, [SceneObject("car", 1, "left", (box,))]))
    assert np.array_equal(image, _flat(224)), "the caller's frame was drawn on"
    x0, y0, x1, y1 = box_pixels(box, (224, 224))
    assert (x0, y0, x1, y1) == (56, 112, 167, 201)
    changed = np.abs(drawn.astype(int) - plain.astype(int)).max(axis=2) > 40
    # the box's edges changed: its left and right sides along their whole height, its bottom edge
    assert changed[y0 + 20:y1 - 2, x0].all() and changed[y0 + 20:y1 - 2, x1].all()
    assert changed[y1, x0 + 2:x1 - 2].all()
    # its inside (away from the label) and everything well outside it did not
    assert not changed[y0 + 30:y1 - 5, x0 + 5:x1 - 5].any()
    outside = np.ones_like(changed)
    outside[y0 - 30:y1 + 4, x0 - 4:x1 + 4] = False  # the box, its edges and the label above it
    assert not changed[outside].any()


def test_the_box_follows_the_stretched_picture() -> None:
    drawn = _decode(render_snapshot(_flat(224), [SceneObject("dog", 1, "still", ((0.5, 0.25, 1.0, 0.75),))],
                                    width=640, aspect=16 / 9))
    plain = _decode(render_snapshot(_flat(224), width=640, aspect=16 / 9))
    changed = np.abs(drawn.astype(int) - plain.astype(int)).max(axis=2) > 40
    x0, y0, x1, y1 = box_pixels((0.5, 0.25, 1.0, 0.75), (640, 360))
    assert (x0, y0, x1, y1) == (320, 90, 639, 269)
    assert changed[y0 + 5:y1 - 5, x0].all() and changed[y1, x0 + 2:x1 - 2].all()
    assert not changed[:, : x0 - 4].any()


@pytest.mark.parametrize(("motion", "label"), [("left", "person <-"), ("right", "person ->"),
                                               ("still", "person"), ("towards", "person towards"),
                                               ("unknown", "person")])
def test_box_labels_say_the_class_and_how_it_moved_in_ascii(motion: str, label: str) -> None:
    assert box_label(SceneObject("person", 2, motion, ())) == label


def test_out_of_range_and_reversed_boxes_are_clamped_into_the_picture() -> None:
    assert box_pixels((1.2, 0.9, -0.5, 0.1), (101, 51)) == (0, 5, 100, 45)


def test_a_non_rgb_image_is_refused() -> None:
    with pytest.raises(ValueError):
        render_snapshot(np.zeros((10, 10), np.uint8))
