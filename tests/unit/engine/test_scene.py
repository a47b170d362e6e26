"""streamcap.engine.scene: tracks, motions and words from hand-made detections (pure, fast)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from streamcap.core.types import MOTIONS
from streamcap.engine.scene import EMPTY_TEXT, SceneSettings, describe_window, track_objects

S = SceneSettings()
DT = 2.0 / 6


@dataclass(frozen=True)
class Det:
    label: str
    score: float
    box: tuple[float, float, float, float]


def walker(x0: float, y1: float, h: float, vx: float = 0.0, vy: float = 0.0, grow: float = 1.0,
           label: str = "person", frames: int = 6, w: float | None = None):
    """One object's box per frame: bottom centre starts at (x0, y1), moves (vx, vy) per frame
    (normalised), the height is multiplied by ``grow`` per frame."""
    out = []
    for i in range(frames):
        hh = h * grow ** i
        ww = w if w is not None else hh * 0.4
        cx, by = x0 + vx * i, y1 + vy * i
        out.append(Det(label, 0.8, (cx - ww / 2, by - hh, cx + ww / 2, by)))
    return out


def scene(*objects):
    n = max(len(o) for o in objects)
    return [[o[i] for o in objects if i < len(o) and o[i] is not None] for i in range(n)]


def test_one_person_walking_right() -> None:
    d = describe_window(scene(walker(0.2, 0.7, 0.2, vx=0.02)), DT, S)
    assert d.text == "a person walks right"
    assert [(o.label, o.count, o.motion) for o in d.objects] == [("person", 1, "right")]
    assert len(d.objects[0].boxes) == 1 and d.objects[0].boxes[0][3] == pytest.approx(0.7)


def test_groups_by_class_and_motion_with_counts_in_words() -> None:
    frames = scene(walker(0.6, 0.6, 0.2, vx=-0.02), walker(0.7, 0.8, 0.2, vx=-0.025), walker(0.9, 0.5, 0.15, vx=-0.02),
                   walker(0.1, 0.7, 0.2, vx=0.02),
                   walker(0.5, 0.95, 0.3, label="truck", w=0.4))
    d = describe_window(frames, DT, S)
    # the still truck is background beside people walking: in the objects, not in the words
    assert d.text == "three people walk left and one walks right"
    assert [(o.label, o.count, o.motion) for o in d.objects] == [
        ("person", 3, "left"), ("person", 1, "right"), ("truck", 1, "still")]


def test_a_standing_person_with_jittery_boxes_stays_still() -> None:
    rng = random.Random(3)
    boxes = [Det("person", 0.7, (0.4 + rng.uniform(-0.005, 0.005), 0.4 + rng.uniform(-0.01, 0.01),
                                 0.48 + rng.uniform(-0.005, 0.005), 0.7 + rng.uniform(-0.01, 0.01))) for _ in range(6)]
    d = describe_window([[b] for b in boxes], DT, S)
    assert d.text == "a person stays still"


def test_towards_and_away_from_feet_and_size() -> None:
    closer = walker(0.3, 0.5, 0.15, vy=0.02, grow=1.05)
    further = walker(0.7, 0.8, 0.3, vy=-0.02, grow=0.95)
    d = describe_window(scene(closer, further), DT, S)
    assert {(o.motion, o.count) for o in d.objects} == {("towards", 1), ("away", 1)}
    assert "approaches" in d.text and "walks away" in d.text


def test_a_one_frame_blip_is_not_an_object() -> None:
    blip = [None, None, Det("dog", 0.5, (0.1, 0.1, 0.2, 0.2)), None, None, None]
    d = describe_window(scene(blip), DT, S)
    assert d.text == EMPTY_TEXT and d.objects == ()


def test_undescribed_classes_are_left_out() -> None:
    d = describe_window(scene(walker(0.5, 0.5, 0.1, label="chair")), DT, S)
    assert d.text == EMPTY_TEXT


def test_after_a_cut_only_the_new_scene_counts() -> None:
    old = walker(0.2, 0.7, 0.2, vx=0.02)[:5] + [None]
    new = [None] * 5 + [Det("car", 0.9, (0.3, 0.5, 0.6, 0.8))]
    d = describe_window(scene(old, new), DT, S, cut_after=5)
    assert [(o.label, o.motion) for o in d.objects] == [("car", "unknown")]
    assert d.text == "new scene: a car is in view"


def test_camera_pan_is_taken_out_of_the_motion_and_said() -> None:
    # the person stands; the camera turns so the picture (and the person in it) slides left
    shift = -0.03
    still_in_world = walker(0.6, 0.7, 0.2, vx=shift)
    camera = [(shift * i, 0.0) for i in range(6)]
    d = describe_window(scene(still_in_world), DT, S, camera=camera)
    assert d.objects[0].motion == "still"
    assert d.text.startswith("the camera pans right; a person stays still")


def test_running_needs_the_speed_and_walking_needs_the_feet_in_view() -> None:
    fast = walker(0.1, 0.6, 0.1, vx=0.07)  # 0.7 heights per 1/3 s: over 2 heights/s
    d = describe_window(scene(fast), DT, S)
    assert d.text == "a person runs right"
    cut_legs = walker(0.3, 1.0, 0.4, vx=0.04)  # box bottom on the picture's edge
    d = describe_window(scene(cut_legs), DT, S)
    assert d.text == "a person moves right"


def test_vehicle_labels_swapping_between_frames_stay_one_track() -> None:
    boxes = walker(0.2, 0.8, 0.2, vx=0.03, w=0.3)
    swapped = [Det("truck" if i % 2 else "car", 0.6 if i % 2 else 0.8, b.box) for i, b in enumerate(boxes)]
    d = describe_window([[b] for b in swapped], DT, S)
    assert [(o.label, o.count, o.motion) for o in d.objects] == [("car", 1, "right")]
    assert d.text == "a car moves right"


def test_two_people_crossing_keep_their_own_tracks() -> None:
    a = walker(0.3, 0.7, 0.2, vx=0.03)
    b = walker(0.45, 0.7, 0.2, vx=-0.03)
    tracks = track_objects(scene(a, b), S)
    assert len(tracks) == 2
    d = describe_window(scene(a, b), DT, S)
    assert {(o.motion, o.count) for o in d.objects} == {("left", 1), ("right", 1)}


def test_many_objects_use_digits_and_every_motion_is_a_wire_motion() -> None:
    people = [walker(0.05 + 0.07 * i, 0.9, 0.1) for i in range(12)]
    d = describe_window(scene(*people), DT, S)
    assert d.text == "12 people stay still"
    rng = random.Random(7)
    for _ in range(200):
        objs = [walker(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.4), vx=rng.uniform(-0.05, 0.05),
                       vy=rng.uniform(-0.03, 0.03), grow=rng.uniform(0.9, 1.1),
                       label=rng.choice(["person", "car", "dog"])) for _ in range(rng.randint(0, 6))]
        d = describe_window(scene(*objs) if objs else [[]] * 6, DT, S)
        assert all(o.motion in MOTIONS and o.count >= 1 for o in d.objects)
        assert sum(o.count for o in d.objects) <= len(objs)
        assert d.text


def test_still_vehicles_are_named_when_nothing_else_is_there() -> None:
    cars = [walker(0.2 + 0.3 * i, 0.9, 0.2, label="car", w=0.25) for i in range(2)]
    d = describe_window(scene(*cars, walker(0.85, 0.9, 0.3, label="truck", w=0.3)), DT, S)
    assert d.text == "two cars and a truck are stationary"
    d = describe_window(scene(cars[0]), DT, S)
    assert d.text == "a car is stationary"
