"""Alert rules on scene objects, on simulated media time: the lifecycle (fire after min_duration_s
of matching windows, never for a blip, update only when the count changes, end, cooldown), zones by
the box's bottom-centre, motion and count filters, the config entry, rules with text and objects,
and a property test over random window sequences."""

from __future__ import annotations

import itertools
import re
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamcap.alerts.objects import ObjectCondition, ObjectConditionConfig, point_in_polygon
from streamcap.alerts.rules import CaptionAlerts, ObjectTracker, Rule
from streamcap.core.types import MOTIONS, AlertPhase, SceneObject

STRIDE_S = 0.5
PERSON = ObjectCondition("person")
# the lower half of the picture, a floor area; x 0.2..0.8
FLOOR = ((0.2, 0.5), (0.8, 0.5), (0.8, 1.0), (0.2, 1.0))


def ids():
    counter = itertools.count(1)
    return lambda: f"a{next(counter)}"


def people(n: int, motion: str = "still") -> tuple[SceneObject, ...]:
    return (SceneObject("person", n, motion),) if n else ()


def replay(tracker: ObjectTracker, counts: list[int], stride_s: float = STRIDE_S, motion: str = "still"):
    """Window k ends at (k + 1) × stride and holds ``counts[k]`` still persons; events as (at_s, alert)."""
    events = []
    for k, n in enumerate(counts):
        at_s = round((k + 1) * stride_s, 6)
        events += [(at_s, a) for a in tracker.observe_objects(k, people(n, motion), at_s)]
    return events


def steps(events):
    return [(t, a.phase, a.start_s, a.end_s) for t, a in events]


# --- lifecycle ---------------------------------------------------------------------------------

def test_fires_after_two_seconds_of_persons_and_not_before():
    tracker = ObjectTracker(Rule("people", objects=PERSON, min_duration_s=2.0), "cam", ids())
    events = replay(tracker, [0, 1, 1, 1, 1, 1, 1, 1])  # persons from the window ending at 1.0
    assert steps(events) == [(3.0, AlertPhase.START, 1.0, None)]
    assert events[0][1].detail == "1 person" and events[0][1].caption_seq == 5


def test_with_no_minimum_it_fires_at_the_first_matching_window():
    tracker = ObjectTracker(Rule("people", objects=PERSON), "cam", ids())
    assert steps(replay(tracker, [0, 2])) == [(1.0, AlertPhase.START, 1.0, None)]


def test_a_one_window_blip_never_fires():
    tracker = ObjectTracker(Rule("people", objects=PERSON, min_duration_s=1.0), "cam", ids())
    assert replay(tracker, [0, 0, 3, 0, 0, 1, 0, 1, 1, 0]) == []  # runs of 0 and 0.5 s


def test_ends_at_the_first_empty_window_with_no_end_after():
    tracker = ObjectTracker(Rule("people", objects=PERSON, min_duration_s=1.0), "cam", ids())
    events = replay(tracker, [1, 1, 1, 1, 0, 0])
    assert steps(events) == [(1.5, AlertPhase.START, 0.5, None), (2.5, AlertPhase.END, 0.5, 2.5)]
    assert events[0][1].id == events[1][1].id and tracker.active is None


def test_end_after_rides_out_a_short_gap_then_ends_when_the_scene_stays_empty():
    rule = Rule("people", objects=PERSON, min_duration_s=1.0, end_after_s=1.5)
    tracker = ObjectTracker(rule, "cam", ids())
    # a 1 s gap (2 windows, from 2.5) is ridden out; the empty scene from 5.0 ends it 1.5 s later
    events = replay(tracker, [1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    assert steps(events) == [(1.5, AlertPhase.START, 0.5, None), (6.5, AlertPhase.END, 0.5, 5.0)]


def test_updates_only_when_the_matched_count_changes():
    tracker = ObjectTracker(Rule("people", objects=PERSON), "cam", ids())
    events = replay(tracker, [1, 1, 2, 2, 2, 1, 1])
    assert [(t, a.phase, a.detail) for t, a in events] == [
        (0.5, AlertPhase.START, "1 person"), (1.5, AlertPhase.UPDATE, "2 person"),
        (3.0, AlertPhase.UPDATE, "1 person")]


def test_matching_again_with_the_same_count_before_the_end_is_no_update():
    tracker = ObjectTracker(Rule("people", objects=PERSON, end_after_s=2.0), "cam", ids())
    assert [a.phase for _, a in replay(tracker, [2, 0, 2, 2])] == [AlertPhase.START]


def test_no_refire_within_the_cooldown_then_fires_again_after_it():
    tracker = ObjectTracker(Rule("people", objects=PERSON, min_duration_s=1.0, cooldown_s=5.0), "cam", ids())
    # ends at 2.5 (cooldown to 7.5); persons 3.0..6.0 fall inside it; persons again from 8.0
    counts = [1] * 4 + [0] + [1] * 7 + [0] * 3 + [1] * 4
    events = replay(tracker, counts)
    assert steps(events) == [(1.5, AlertPhase.START, 0.5, None), (2.5, AlertPhase.END, 0.5, 2.5),
                             (9.0, AlertPhase.START, 8.0, None)]
    assert events[0][1].id != events[2][1].id


def test_close_ends_an_open_alert_at_the_given_time():
    alerts = CaptionAlerts([Rule("people", objects=PERSON)], ids())
    started = alerts.observe_objects("cam", None, people(1), 4.0)
    assert [(a.phase, a.caption_seq) for a in started] == [(AlertPhase.START, None)]
    assert [(a.phase, a.end_s) for a in alerts.close("cam", 9.0)] == [(AlertPhase.END, 9.0)]
    assert alerts.close("cam", 10.0) == []


# --- zones, motion, counts ---------------------------------------------------------------------

def test_a_box_counts_in_a_zone_by_its_bottom_centre():
    zone = ObjectCondition("person", zone=FLOOR)
    feet_in = (0.4, 0.3, 0.6, 0.7)  # feet at (0.5, 0.7): on the floor area
    feet_right = (0.7, 0.6, 1.0, 0.95)  # overlaps x 0.7..0.8 of the zone; feet at (0.85, 0.95): outside
    feet_left = (0.0, 0.55, 0.3, 0.9)  # overlaps x 0.2..0.3; feet at (0.15, 0.9): outside
    feet_behind = (0.3, 0.1, 0.7, 0.45)  # stands behind the floor area: feet at y 0.45
    assert zone.in_zone(feet_in)
    assert not any(zone.in_zone(b) for b in (feet_right, feet_left, feet_behind))
    group = SceneObject("person", 4, "still", (feet_in, feet_right, feet_left, feet_behind))
    assert zone.count([group]) == 1 and zone.matches([group])
    assert not zone.matches([SceneObject("person", 3, "still", (feet_right, feet_left, feet_behind))])


def test_feet_on_the_zone_edge_and_the_bottom_of_the_picture_are_in_it():
    zone = ObjectCondition("car", zone=FLOOR)
    assert zone.in_zone((0.3, 0.6, 0.5, 1.0))  # wheels on the picture's bottom edge (the zone's edge)
    assert zone.in_zone((0.7, 0.2, 0.9, 0.5))  # feet at (0.8, 0.5): the zone's corner
    assert not zone.in_zone((0.81, 0.6, 0.99, 0.8))


def test_point_in_a_concave_polygon():
    u_shape = ((0.0, 0.0), (0.3, 0.0), (0.3, 0.7), (0.7, 0.7), (0.7, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    assert point_in_polygon((0.1, 0.5), u_shape) and point_in_polygon((0.5, 0.9), u_shape)
    assert not point_in_polygon((0.5, 0.3), u_shape)  # in the notch


def test_groups_without_boxes_count_everywhere_but_not_in_a_zone():
    unplaced = [SceneObject("person", 4, "still")]
    assert ObjectCondition("person").count(unplaced) == 4
    assert ObjectCondition("person", zone=FLOOR).count(unplaced) == 0


def test_zone_rule_fires_only_while_someone_stands_in_the_zone():
    tracker = ObjectTracker(Rule("floor", objects=ObjectCondition("person", zone=FLOOR), min_duration_s=0.5),
                           "cam", ids())
    outside = (SceneObject("person", 1, "still", ((0.0, 0.2, 0.15, 0.9),)),)
    inside = (SceneObject("person", 1, "left", ((0.4, 0.3, 0.6, 0.8),)),)
    script = [outside, outside, inside, inside, outside]
    events = [(k, a) for k, objs in enumerate(script) for a in tracker.observe_objects(k, objs, k * 0.5)]
    assert [(k, a.phase, a.detail) for k, a in events] == [
        (3, AlertPhase.START, "1 person in zone"), (4, AlertPhase.END, "1 person in zone")]


def test_motion_filter_counts_only_objects_moving_so():
    scene = [SceneObject("person", 2, "left"), SceneObject("person", 1, "still"), SceneObject("car", 3, "left")]
    assert ObjectCondition("person", motion="left").count(scene) == 2
    assert ObjectCondition("person", motion=frozenset({"left", "still"})).count(scene) == 3
    assert ObjectCondition("person", motion="away").count(scene) == 0
    assert ObjectCondition("person").count(scene) == 3
    assert ObjectCondition("any", motion="left").count(scene) == 5
    assert ObjectCondition("Person ").count(scene) == 3  # labels compare without case


def test_detail_says_what_matched():
    cond = ObjectCondition("person", motion="left", zone=FLOOR)
    assert cond.describe(2) == "2 person moving left in zone"
    assert ObjectCondition("any", motion=frozenset({"away", "left"})).describe(3) == "3 object moving left or going away"


@pytest.mark.parametrize("counts, cond, hits", [
    ([1, 2, 3, 4], ObjectCondition("person", min_count=2, max_count=3), [False, True, True, False]),
    ([0, 1, 2], ObjectCondition("person", min_count=0, max_count=0), [True, False, False]),  # nobody there
    ([0, 5, 50], ObjectCondition("person", min_count=5), [False, True, True]),
])
def test_min_and_max_count_bound_the_match(counts, cond, hits):
    assert [cond.matches(people(n)) for n in counts] == hits


def test_a_rule_for_an_empty_zone_fires_when_nobody_is_there():
    rule = Rule("gate unattended", objects=ObjectCondition("person", min_count=0, max_count=0, zone=FLOOR),
                min_duration_s=1.0)
    tracker = ObjectTracker(rule, "cam", ids())
    guard = (SceneObject("person", 1, "still", ((0.4, 0.3, 0.6, 0.8),)),)
    events = [a for k, objs in enumerate([guard, (), (), (), guard])
              for a in tracker.observe_objects(k, objs, k * 0.5)]
    assert [(a.phase, a.start_s, a.end_s, a.detail) for a in events] == [
        (AlertPhase.START, 0.5, None, "0 person in zone"), (AlertPhase.END, 0.5, 2.0, "0 person in zone")]


@pytest.mark.parametrize("kwargs, message", [
    ({"label": ""}, "label"),
    ({"label": "person", "min_count": -1}, "min_count"),
    ({"label": "person", "min_count": 3, "max_count": 2}, "max_count"),
    ({"label": "person", "min_count": 0}, "matches every window"),
    ({"label": "person", "motion": "sideways"}, "unknown motion"),
    ({"label": "person", "motion": frozenset({"left", "up"})}, r"unknown motion\(s\) \['up'\]"),
    ({"label": "person", "motion": frozenset()}, "empty"),
    ({"label": "person", "zone": ((0.1, 0.1), (0.9, 0.9))}, "at least 3 points"),
    ({"label": "person", "zone": ((0.1, 0.1), (1.2, 0.1), (0.5, 0.9))}, "outside the picture"),
    ({"label": "person", "zone": ((0.1, 0.1), (0.5, 0.5), (0.9, 0.9))}, "no area"),
    ({"label": "person", "zone": ((0.1, 0.1, 0.2), (0.5, 0.5), (0.9, 0.1))}, r"must be \[x, y\]"),
])
def test_bad_conditions_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ObjectCondition(**kwargs)


# --- the config entry --------------------------------------------------------------------------

TOML = """
label = "person"
min_count = 2
max_count = 5
motion = ["left", "right"]
zone = [[0.2, 0.5], [0.8, 0.5], [0.8, 1.0], [0.2, 1.0]]
"""


def test_config_entry_round_trip():
    config = ObjectConditionConfig.model_validate(tomllib.loads(TOML))
    assert config.to_condition() == ObjectCondition("person", 2, 5, frozenset({"left", "right"}), FLOOR)
    assert ObjectConditionConfig.model_validate(config.model_dump()) == config
    assert ObjectConditionConfig(label="car").to_condition() == ObjectCondition("car")
    assert ObjectConditionConfig(label="car", motion="away").to_condition().motion == "away"


@pytest.mark.parametrize("entry, message", [
    ({"label": "person", "motion": "sideways"}, "unknown motion"),
    ({"label": "person", "motion": ["left", "up"]}, "unknown motion"),
    ({"label": "person", "zone": [[0.1, 0.1], [0.9, 0.9]]}, "at least 3 items"),
    ({"label": "person", "zone": [[0.1, 0.1], [1.5, 0.1], [0.5, 0.9]]}, "less than or equal to 1"),
    ({"label": "person", "zone": [[0.1, -0.1], [0.9, 0.1], [0.5, 0.9]]}, "greater than or equal to 0"),
    ({"label": "person", "min_count": -1}, "greater than or equal to 0"),
    ({"label": "person", "min_count": 3, "max_count": 1}, "max_count"),
    ({"label": "person", "min_count": 0}, "matches every window"),
    ({"label": ""}, "at least 1 character"),
    ({"label": "person", "colour": "red"}, "Extra inputs are not permitted"),
])
def test_config_entry_errors_say_what_is_wrong(entry, message):
    with pytest.raises(ValidationError, match=message):
        ObjectConditionConfig.model_validate(entry)


# --- rules with objects, text, or both ---------------------------------------------------------

def test_a_rule_may_have_only_objects_and_still_needs_some_matcher():
    assert Rule("people", objects=PERSON).objects == PERSON
    with pytest.raises(ValueError, match="or objects"):
        Rule("nothing")


def test_each_feed_drives_only_the_rules_that_match_on_it():
    alerts = CaptionAlerts([Rule("fire", keywords=("fire",)), Rule("people", objects=PERSON)], ids())
    assert alerts.watches_objects
    assert [a.rule for a in alerts.observe("cam", 0, "a fire and a person", 0.0, 1.0)] == ["fire"]
    assert [a.rule for a in alerts.observe_objects("cam", 0, people(1), 1.0)] == ["people"]
    assert not CaptionAlerts([Rule("fire", keywords=("fire",))], ids()).watches_objects


def test_an_object_tracker_needs_an_object_condition():
    with pytest.raises(ValueError, match="no object condition"):
        ObjectTracker(Rule("fire", keywords=("fire",)), "cam", ids())


def test_a_rule_with_text_and_objects_alerts_on_either_each_with_its_own_lifecycle():
    rule = Rule("intruder", keywords=("intruder",), objects=PERSON, min_duration_s=1.0)
    alerts = CaptionAlerts([rule], ids())
    events = []

    def window(at_s, seq, text, final_start_s, n):  # as the processor feeds a window: final, then objects
        events.extend((at_s, a) for a in alerts.observe("cam", seq, text, final_start_s, at_s))
        events.extend((at_s, a) for a in alerts.observe_objects("cam", seq, people(n), at_s))

    window(0.5, 0, "an empty hall", 0.0, 1)  # objects match from 0.5
    window(1.0, 0, "an empty hall", 0.0, 1)
    window(1.5, 1, "an intruder in the hall", 1.0, 1)  # 1 s of persons: the objects' alert starts
    window(2.0, 1, "an intruder in the hall", 1.0, 0)  # 1 s of the final: the captions' alert starts
    window(2.5, 2, "an empty hall", 2.5, 0)  # neither matches: the captions' alert ends too
    assert [(t, a.id, a.phase, a.start_s, a.end_s, a.caption_seq, a.detail) for t, a in events] == [
        (1.5, "a1", AlertPhase.START, 0.5, None, 1, "1 person"),
        (2.0, "a2", AlertPhase.START, 1.0, None, 1, ""),
        (2.0, "a1", AlertPhase.END, 0.5, 2.0, 1, "1 person"),
        (2.5, "a2", AlertPhase.END, 1.0, 2.5, 2, "")]
    assert {a.rule for _, a in events} == {"intruder"}


def test_close_ends_the_open_alerts_of_both_feeds():
    alerts = CaptionAlerts([Rule("intruder", keywords=("intruder",), objects=PERSON)], ids())
    alerts.observe("cam", 0, "an intruder", 0.0, 0.5)
    alerts.observe_objects("cam", 0, people(2), 0.5)
    assert sorted((a.id, a.phase, a.end_s) for a in alerts.close("cam", 3.0)) == [
        ("a1", AlertPhase.END, 3.0), ("a2", AlertPhase.END, 3.0)]


# --- property: random window sequences ---------------------------------------------------------

scenes = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(MOTIONS)), min_size=0, max_size=3)


@st.composite
def rules_strategy(draw):
    lo = draw(st.integers(0, 2))
    hi = draw(st.integers(lo, 4) if lo == 0 else st.one_of(st.none(), st.integers(lo, 4)))
    motion = draw(st.one_of(st.just("any"), st.sampled_from(MOTIONS),
                            st.frozensets(st.sampled_from(MOTIONS), min_size=1)))
    half = st.integers(0, 8).map(lambda k: k * 0.25)
    return Rule(f"r{draw(st.integers(0, 10**6))}", objects=ObjectCondition("person", lo, hi, motion),
                min_duration_s=draw(half), cooldown_s=draw(half), end_after_s=draw(half))


@settings(max_examples=200, deadline=None)
@given(rules=st.lists(rules_strategy(), min_size=1, max_size=3, unique_by=lambda r: r.name),
       windows=st.lists(st.tuples(st.sampled_from([0.25, 0.5, 1.0]), scenes), max_size=60))
def test_random_windows_give_well_formed_alerts_that_only_start_after_enough_matching(rules, windows):
    alerts = CaptionAlerts(rules, ids())
    seen: list[tuple[float, tuple[SceneObject, ...]]] = []
    events: list[tuple[int, object]] = []  # (window index, alert); close() as index len(windows)
    at_s = 0.0
    for k, (gap_s, groups) in enumerate(windows):
        at_s += gap_s
        objects = tuple(SceneObject("person", n, m) for n, m in groups)
        seen.append((at_s, objects))
        events += [(k, a) for a in alerts.observe_objects("cam", k, objects, at_s)]
    events += [(len(windows), a) for a in alerts.close("cam", at_s + 1.0)]

    for rule in rules:
        cond = rule.objects
        mine = [(k, a) for k, a in events if a.rule == rule.name]
        assert re.fullmatch(r"(SU*E)*", "".join(a.phase.value[0].upper() for _, a in mine))
        hits = [cond.matches(objs) for _, objs in seen]
        alert_id, reported, prev_end = None, None, None
        for k, a in mine:
            if a.phase is AlertPhase.START:
                assert a.id != alert_id  # a new alert, never overlapping the previous one
                alert_id = a.id
                now_s = seen[k][0]
                assert now_s - a.start_s >= rule.min_duration_s - 1e-9
                run = [hit for t, hit in zip((t for t, _ in seen), hits) if a.start_s <= t <= now_s]
                assert run and all(run), "every window since the alert's start matched"
                if prev_end is not None:
                    assert a.start_s >= prev_end + rule.cooldown_s - 1e-9
                reported = a.detail
            elif a.phase is AlertPhase.UPDATE:
                assert a.id == alert_id and hits[k] and a.detail != reported  # the count changed
                reported = a.detail
            else:
                assert a.id == alert_id and a.end_s is not None and a.end_s >= a.start_s
                if k < len(windows):  # ended by the scene, not by close()
                    assert seen[k][0] - a.end_s >= rule.end_after_s - 1e-9
                    assert not any(hit for (t, _), hit in zip(seen, hits) if a.end_s <= t <= seen[k][0])
                prev_end = a.end_s
