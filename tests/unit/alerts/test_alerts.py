"""Alert rules and their lifecycle on scripted storylines of final captions (pure, media time):
fire once for an event that lasts long enough, never for a shorter one, end when it ends, no
re-fire within the cooldown; whole-word matching; stream-health conditions on simulated time."""

from __future__ import annotations

import itertools

import pytest

from streamcap.alerts.rules import AlertTracker, CaptionAlerts, Rule, words
from tests.helpers import health_limits as limits
from streamcap.alerts.health import BEHIND, BLACK, FROZEN, RECONNECTS, STALLED, HealthMonitor
from streamcap.core.types import AlertPhase, Severity, StreamState

NS = 1_000_000_000




def ids():
    counter = itertools.count(1)
    return lambda: f"a{next(counter)}"


def replay(tracker: AlertTracker, script: list[tuple[str, float, float]], stride_s: float = 0.5):
    """Feed a storyline of finals (text, start, end): after every window (each ``stride_s`` of
    media) the tracker sees the current final with its span grown to that window's end."""
    events = []
    for seq, (text, start, end) in enumerate(script):
        t = start + stride_s
        while t <= end + 1e-9:
            events += [(round(t, 3), e) for e in tracker.observe(seq, text, start, t)]
            t += stride_s
    return events


FALL = Rule("fall", phrases=("lying on the floor",), min_duration_s=3.0, cooldown_s=30.0)


def test_a_long_enough_event_fires_once_updates_and_ends():
    tracker = AlertTracker(FALL, "cam", ids())
    events = replay(tracker, [
        ("a man walks in", 0, 10),
        ("a man is lying on the floor", 10, 20),
        ("a man is lying on the floor and a dog sits", 20, 24),
        ("a man stands up", 24, 30),
    ])
    phases = [(t, e.phase, e.start_s, e.end_s, e.caption_seq) for t, e in events]
    assert phases == [(13.0, AlertPhase.START, 10, None, 1),
                      (20.5, AlertPhase.UPDATE, 10, None, 2),
                      (24.5, AlertPhase.END, 10, 24, 3)]
    assert len({e.id for _, e in events}) == 1 and events[0][1].rule == "fall"


def test_an_event_shorter_than_the_minimum_never_fires():
    tracker = AlertTracker(FALL, "cam", ids())
    assert replay(tracker, [("a man walks", 0, 5), ("a man is lying on the floor", 5, 7.5),
                            ("a man walks", 7.5, 20)]) == []


def test_no_refire_within_the_cooldown_then_fires_again_after_it():
    tracker = AlertTracker(FALL, "cam", ids())
    script = [("a man is lying on the floor", 0, 5), ("a man walks", 5, 10),  # ends at 5: cooldown to 35
              ("a man is lying on the floor", 10, 20), ("a man walks", 20, 40),  # inside the cooldown
              ("a man is lying on the floor", 40, 50)]  # after it
    starts = [(t, e) for t, e in replay(tracker, script) if e.phase is AlertPhase.START]
    assert [t for t, _ in starts] == [3.0, 43.0]
    assert starts[0][1].id != starts[1][1].id


def test_end_after_gives_hysteresis_to_a_brief_mismatch():
    rule = Rule("fall", keywords=("lying",), min_duration_s=1.0, end_after_s=2.0)
    tracker = AlertTracker(rule, "cam", ids())
    events = replay(tracker, [("someone lying down", 0, 6), ("someone sitting", 6, 7),  # 1 s: not ended
                              ("someone lying down", 7, 12), ("someone sitting", 12, 20)])
    assert [(t, e.phase, e.end_s) for t, e in events] == [
        (1.0, AlertPhase.START, None), (7.5, AlertPhase.UPDATE, None), (14.0, AlertPhase.END, 12)]


def test_close_ends_an_open_alert():
    tracker = AlertTracker(Rule("x", keywords=("fire",)), "cam", ids())
    assert tracker.observe(0, "fire in the hall", 0, 1)[0].phase is AlertPhase.START
    ended = tracker.close(4.0)
    assert [(e.phase, e.end_s) for e in ended] == [(AlertPhase.END, 4.0)] and tracker.active is None


@pytest.mark.parametrize("text, rule, hit", [
    ("a person says yes", Rule("r", keywords=("yes",)), True),
    ("a person with blue eyes", Rule("r", keywords=("yes",)), False),  # no substring matching
    ("the door opens", Rule("r", keywords=("door",)), True),
    ("an outdoor scene", Rule("r", keywords=("door",)), False),
    ("Smoke rises from a fire", Rule("r", phrases=("from a fire",)), True),
    ("a fire truck passes", Rule("r", phrases=("from a fire",)), False),
    ("a red circle moves left", Rule("r", regex=r"\bred (circle|square)\b"), True),
    ("a red triangle moves left", Rule("r", regex=r"\bred (circle|square)\b"), False),
    ("a man is lying on the floor", Rule("r", description="someone on the ground", threshold=0.5), True),
])
def test_matching_is_by_whole_words_phrases_regex_or_meaning(text, rule, hit):
    def similarity(a: str, b: str) -> float:  # a stand-in for the embedder in this pure test
        return 0.9 if "lying" in words(a) else 0.1
    assert rule.matches(text, similarity) is hit


def test_bad_rules_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="give keywords"):
        Rule("empty")
    with pytest.raises(ValueError, match="one word"):
        Rule("r", keywords=("two words",))
    with pytest.raises(ValueError, match="bad regex"):
        Rule("r", regex="(")
    with pytest.raises(ValueError, match="unique"):
        CaptionAlerts([Rule("a", keywords=("x",)), Rule("a", keywords=("y",))], ids())


def test_caption_alerts_apply_rules_per_stream():
    rules = [Rule("door", keywords=("door",), streams=frozenset({"front"}), severity=Severity.INFO),
             Rule("fire", keywords=("fire",))]
    alerts = CaptionAlerts(rules, ids())
    assert [a.rule for a in alerts.observe("front", 0, "fire at the door", 0, 1)] == ["door", "fire"]
    assert [a.rule for a in alerts.observe("back", 0, "fire at the door", 0, 1)] == ["fire"]
    assert [(a.rule, a.phase) for a in alerts.close("back", 2.0)] == [("fire", AlertPhase.END)]


# --- stream health -----------------------------------------------------------------------------

def _feed(monitor: HealthMonitor, seconds: float, fps: float, t0: float = 0.0, luma=(120.0, 40.0), change=5.0):
    out, n = [], int(seconds * fps)
    for i in range(n):
        t = t0 + i / fps
        out += monitor.frame(int(t * NS), t, luma[0], luma[1], None if t == 0 else change)
        out += monitor.tick(int(t * NS))
    return out, t0 + n / fps


def test_stalled_after_n_frame_intervals_then_ends_with_the_next_frame():
    m = HealthMonitor("cam", limits(stalled_frames=10, min_stalled_s=0.5), ids())
    events, t = _feed(m, 3, 10)
    assert events == []
    assert m.tick(int((t + 0.8) * NS)) == []  # 0.9 s of silence: under 10 intervals
    started = m.tick(int((t + 1.1) * NS))
    assert [(e.rule, e.phase, e.severity) for e in started] == [(STALLED, AlertPhase.START, Severity.CRITICAL)]
    ended = m.frame(int((t + 5) * NS), t + 5, 120, 40, 5.0)
    assert [(e.rule, e.phase) for e in ended] == [(STALLED, AlertPhase.END)]


def test_source_status_drives_stalled_too():
    m = HealthMonitor("cam", limits(), ids())
    assert [e.rule for e in m.status(StreamState.RECONNECTING, 0)] == [STALLED]
    assert m.status(StreamState.LIVE, NS) == []
    assert [e.phase for e in m.frame(2 * NS, 2.0, 120, 40, 5.0)] == [AlertPhase.END]


def test_frozen_picture_starts_after_frozen_s_and_ends_when_it_moves():
    m = HealthMonitor("cam", limits(frozen_s=2.0), ids())
    _, t = _feed(m, 2, 10)
    events, t = _feed(m, 3, 10, t, change=0.0)
    starts = [e for e in events if e.phase is AlertPhase.START]
    assert [e.rule for e in starts] == [FROZEN] and starts[0].start_s == pytest.approx(2.0, abs=0.15)  # when it froze
    events, _ = _feed(m, 1, 10, t, change=6.0)
    assert [(e.rule, e.phase) for e in events] == [(FROZEN, AlertPhase.END)]


def test_black_picture_is_reported_as_black_not_frozen():
    m = HealthMonitor("cam", limits(blank_s=1.0, frozen_s=1.0), ids())
    events, t = _feed(m, 3, 10, luma=(3.0, 0.5), change=0.0)
    assert {(e.rule, e.phase) for e in events} == {(BLACK, AlertPhase.START)}
    assert "black" in events[0].detail
    events, _ = _feed(m, 1, 10, t)
    assert [(e.rule, e.phase) for e in events] == [(BLACK, AlertPhase.END)]


def test_reconnect_storm_and_falling_behind_use_rates_with_hysteresis():
    m = HealthMonitor("cam", limits(storm_reconnects=3, storm_window_s=60, max_drops_per_min=10), ids())
    assert [m.reconnect(i * NS) for i in range(3)] == [[], [], []]
    assert [e.rule for e in m.reconnect(3 * NS)] == [RECONNECTS]
    assert m.tick(30 * NS) == []
    assert [(e.rule, e.phase) for e in m.tick(64 * NS)] == [(RECONNECTS, AlertPhase.END)]
    assert m.drop(100 * NS, 10) == []
    assert [e.rule for e in m.drop(101 * NS, 1)] == [BEHIND]
    assert [(e.rule, e.phase) for e in m.tick(170 * NS)] == [(BEHIND, AlertPhase.END)]
