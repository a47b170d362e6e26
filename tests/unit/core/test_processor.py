"""StreamProcessor on simulated time with the fake engine: no event loop, no model, milliseconds.

Frames are solid colours (the fake engine names the dominant colour), fed at 10 fps of simulated
time; every window handed out is captioned at once, as an idle engine would.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamcap.alerts.health import BEHIND, FROZEN, STALLED, HealthLimits
from streamcap.alerts.rules import Rule
from streamcap.core.errors import ConfigError
from streamcap.core.events import AlertEvent, CaptionEvent, DropEvent, ProgressEvent, StatusEvent
from streamcap.core.processor import ProcessorSettings, StabilizerSettings, StreamProcessor, TrackSettings
from streamcap.core.types import AlertPhase, CaptionState, DropReason, Frame, StreamState
from streamcap.engine.fake import COLOURS, FakeEngine
from tests.helpers import health_limits as limits

NS = 1_000_000_000
SIZE = 16
FPS = 10




def settings(*, live: bool = True, health: HealthLimits | None = None, tracks=None, ring: int = 64,
             history: int = 100, collect: bool = False) -> ProcessorSettings:
    video = TrackSettings("video", window_s=1.0, stride_s=0.5, frames_per_window=4,
                          stabilizer=StabilizerSettings(agree=2, fresh_agree=None))
    return ProcessorSettings(stream="cam", live=live, frame_shape=(SIZE, SIZE, 3), ring_capacity=ring,
                             max_ingest_fps=FPS, max_backlog=2 if live else None, cut_diff=8.0,
                             tracks=tuple(tracks or (video,)), health=health, finals_history=history,
                             collect_finals=collect)


def picture(colour: str, noise: int = 0, seed: int = 0) -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = COLOURS[colour]
    if noise:
        rng = np.random.default_rng(seed)
        img = np.clip(img.astype(int) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
    return img


class Driver:
    """Feeds a processor on simulated time and captions its windows with the fake engine."""

    def __init__(self, processor: StreamProcessor, engine: FakeEngine | None = None) -> None:
        self.p = processor
        self.engine = engine or FakeEngine(frames_per_window=4, image_size=SIZE)
        self.events: list = []
        self.seq = 0
        self.t_s = 0.0

    def frames(self, seconds: float, colour: str, *, noise: int = 0, caption: bool = True) -> None:
        for _ in range(round(seconds * FPS)):
            self.frame(picture(colour, noise, self.seq), caption=caption)

    def frame(self, image: np.ndarray, *, pts_s: float | None = None, caption: bool = True) -> list:
        pts = self.t_s if pts_s is None else pts_s
        now = int(pts * NS)
        windows = self.p.feed_frame(Frame("cam", self.seq, now, pts, image), now)
        self.seq += 1
        self.t_s = max(self.t_s, pts) + 1 / FPS
        self.events += self.p.take_events()
        if caption:
            for w in windows:
                result = self.engine.caption_batch([[f.image for f in w.frames]])[0]
                self.events += self.p.feed_result(w, result, now + NS // 20)
        return windows

    def tick(self, at_s: float) -> list:
        out = self.p.tick(int(at_s * NS))
        self.events += out
        return out

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def finals(self):
        return [e.caption for e in self.of(CaptionEvent) if e.caption.state is CaptionState.FINAL]


def test_scene_change_gives_one_final_per_scene_and_a_cut_at_the_change():
    d = Driver(StreamProcessor(settings(live=False)))
    d.frames(4, "red")
    d.frames(4, "yellow")
    d.events += d.p.finish(int(d.t_s * NS))
    assert [c.text for c in d.finals()] == ["a red picture", "a yellow picture"]
    assert d.p.picture.cuts == pytest.approx((4.0,))
    second = d.finals()[1]
    assert 4.0 <= second.start_s <= 4.5 and second.track == "video"
    seqs = [e.caption.seq for e in d.of(CaptionEvent)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert d.p.state is StreamState.ENDED and d.p.windows_in_flight == 0
    assert [e.status.state for e in d.of(StatusEvent)] == [StreamState.ENDED]
    assert [c.text for c in d.p.history()] == ["a red picture", "a yellow picture"]
    assert d.of(ProgressEvent)[-1].media_s == pytest.approx(7.5, abs=0.51)


def test_a_stall_raises_health_stalled_and_the_next_frame_ends_it():
    d = Driver(StreamProcessor(settings(health=limits(stalled_frames=10, min_stalled_s=0.5))))
    d.events += d.p.feed_status(StreamState.LIVE, "connected", now_ns=0)
    d.frames(2, "green", noise=20)
    assert d.tick(d.t_s + 0.5) == []
    started = d.tick(d.t_s + 1.2)
    assert [(e.alert.rule, e.alert.phase) for e in started] == [(STALLED, AlertPhase.START)]
    stalled = d.p.feed_status(StreamState.STALLED, "no frame for 2.0 s", now_ns=int((d.t_s + 2) * NS))
    assert [e.status.state for e in stalled if isinstance(e, StatusEvent)] == [StreamState.STALLED]
    d.t_s += 3
    d.events += d.p.feed_status(StreamState.LIVE, "reconnected", now_ns=int(d.t_s * NS))
    d.frames(0.5, "green", noise=20)
    ends = [e.alert for e in d.of(AlertEvent) if e.alert.phase is AlertPhase.END]
    assert [a.rule for a in ends] == [STALLED]
    assert d.p.state is StreamState.LIVE
    assert [e.status.state for e in d.of(StatusEvent)] == [StreamState.LIVE, StreamState.LIVE]


def test_illegal_and_repeated_status_changes_are_refused():
    p = StreamProcessor(settings())
    assert p.feed_status(StreamState.STALLED, "no frames", now_ns=0) == []  # STARTING -> STALLED is illegal
    assert [e.status.state for e in p.feed_status(StreamState.LIVE, now_ns=1)] == [StreamState.LIVE]
    assert p.feed_status(StreamState.LIVE, now_ns=2) == []
    assert [e.status.state for e in p.fail("boom", "internal_error", 3)] == [StreamState.ERROR]
    assert p.feed_status(StreamState.LIVE, now_ns=4) == []  # terminal
    closed = p.close("stream removed", "stream_removed", 5)
    assert [(e.status.state, e.status.code) for e in closed] == [(StreamState.ENDED, "stream_removed")]


def test_frozen_picture_raises_health_frozen_after_frozen_s_and_ends_when_it_moves():
    d = Driver(StreamProcessor(settings(health=limits(frozen_s=2.0))))
    d.frames(1, "yellow", noise=30)
    still = picture("yellow", 30, seed=99)
    for _ in range(30):
        d.frame(still)
    starts = [e.alert for e in d.of(AlertEvent) if e.alert.phase is AlertPhase.START]
    assert [a.rule for a in starts] == [FROZEN]
    assert starts[0].start_s == pytest.approx(1.0, abs=0.15)
    d.frames(0.5, "yellow", noise=30)
    assert [e.alert.rule for e in d.of(AlertEvent) if e.alert.phase is AlertPhase.END] == [FROZEN]


def test_drops_are_events_with_their_reason():
    d = Driver(StreamProcessor(settings(health=limits(max_drops_per_min=3))))
    d.frames(2, "red", noise=10)
    assert d.frame(picture("red"), pts_s=0.5) == []  # pts went backwards: not kept, no window
    windows = d.frame(picture("red", 10, 5), pts_s=10.0, caption=False)  # after a gap: no picture
    assert len(windows) == 2 and d.p.windows_in_flight == 2
    d.events += d.p.window_dropped(windows[0], DropReason.ENGINE_BUSY, 10 * NS)
    d.events += d.p.feed_drop("handoff_full", 10 * NS)
    d.events += d.p.feed_drop("ingest_full", 10 * NS)
    assert d.p.windows_in_flight == 1
    assert d.p.feed_frame(Frame("cam", 99, 10 * NS, math.inf, picture("red")), 10 * NS) == []
    d.events += d.p.take_events()
    drops = {(e.unit, e.reason): e.count for e in d.of(DropEvent)}
    assert drops[("window", DropReason.MEDIA_GAP)] >= 10
    assert drops[("frame", DropReason.BAD_PTS)] == 1
    assert drops[("window", DropReason.ENGINE_BUSY)] == 1
    assert drops[("frame", DropReason.HANDOFF_FULL)] == 1
    # behind_live, engine_busy and handoff_full mean the machine is not keeping up
    assert [e.alert.rule for e in d.of(AlertEvent) if e.alert.phase is AlertPhase.START] == [BEHIND]


def test_caption_alert_starts_on_a_matching_final_and_ends_when_the_scene_changes():
    rule = Rule("blue-thing", keywords=("blue",), cooldown_s=0.0, min_duration_s=0.0, end_after_s=0.0)
    d = Driver(StreamProcessor(settings(), rules=[rule]))
    d.frames(3, "red")
    assert d.of(AlertEvent) == []
    d.frames(3, "blue")
    d.frames(3, "red")
    steps = [(e.alert.rule, e.alert.phase) for e in d.of(AlertEvent)]
    assert steps[0] == ("blue-thing", AlertPhase.START) and steps[-1] == ("blue-thing", AlertPhase.END)
    start = d.of(AlertEvent)[0].alert
    blue_final = next(c for c in d.finals() if c.text == "a blue picture")
    assert start.caption_seq == blue_final.seq


def test_open_alerts_end_when_the_stream_is_removed():
    rule = Rule("red-thing", keywords=("red",), min_duration_s=0.0)
    d = Driver(StreamProcessor(settings(), rules=[rule]))
    d.frames(3, "red")
    assert [e.alert.phase for e in d.of(AlertEvent)] == [AlertPhase.START]
    closed = d.p.close("stream removed", "stream_removed", int(d.t_s * NS))
    assert [type(e).__name__ for e in closed] == ["StatusEvent", "AlertEvent"]
    assert closed[1].alert.phase is AlertPhase.END


def test_two_tracks_share_frames_but_plan_and_stabilise_apart():
    video = TrackSettings("video", 1.0, 0.5, 4, StabilizerSettings(2, None))
    slow = TrackSettings("summary", 2.0, 1.0, 4, StabilizerSettings(2, None))
    d = Driver(StreamProcessor(settings(tracks=(video, slow))))
    d.frames(4, "white")
    by_track: dict[str, int] = {}
    for e in d.of(ProgressEvent):
        by_track[e.track] = by_track.get(e.track, 0) + 1
    assert by_track["video"] > by_track["summary"] >= 2
    finals = {c.track: c.text for c in d.finals()}
    assert finals == {"video": "a white picture", "summary": "a white picture"}
    seqs = [e.caption.seq for e in d.of(CaptionEvent)]
    assert len(set(seqs)) == len(seqs)  # one seq space per stream


def test_a_ring_too_small_for_the_window_is_a_config_error():
    with pytest.raises(ConfigError, match="ring_capacity"):
        StreamProcessor(settings(ring=8))


def test_replaying_the_same_input_gives_the_same_events():
    def run():
        d = Driver(StreamProcessor(settings(health=limits())))
        d.frames(3, "red", noise=5)
        d.frames(3, "green", noise=5)
        return [(type(e).__name__, getattr(e, "caption", None)) for e in d.events]

    assert run() == run()


def test_object_rules_see_every_window_and_a_files_last_windows_after_its_source_ended() -> None:
    from streamcap.alerts.objects import ObjectCondition
    from streamcap.core.types import CaptionResult, SceneObject

    rule = Rule("someone", objects=ObjectCondition("person"), min_duration_s=1.0, end_after_s=0.0, cooldown_s=0.0)
    p = StreamProcessor(settings(live=False), rules=[rule])
    person = (SceneObject("person", 2, "left", ((0.1, 0.2, 0.2, 0.6), (0.5, 0.2, 0.6, 0.6))),)
    events, out = [], []
    for i in range(40):  # 4 s of frames; the windows are answered only at the end
        now = int(i / FPS * NS)
        out += p.feed_frame(Frame("cam", i, now, i / FPS, picture("red")), now)
        events += p.take_events()
    first, rest = [w for w in out if w.end_s <= 2.0], [w for w in out if w.end_s > 2.0]
    for w in first:  # people: the alert starts
        events += p.feed_result(w, CaptionResult("x", -0.1, person), 5 * NS)
    assert [e.alert.phase for e in events if isinstance(e, AlertEvent)] == [AlertPhase.START]
    # the file is read to its end while its last windows are still out (a slow engine)
    events += p.feed_status(StreamState.ENDED, "end of file", now_ns=5 * NS)
    for w in rest:  # people until 2.5 s, then nobody
        objects = person if w.end_s <= 2.5 else ()
        events += p.feed_result(w, CaptionResult("x", -0.1, objects), 6 * NS)
    events += p.finish(7 * NS)
    alerts = [e.alert for e in events if isinstance(e, AlertEvent)]
    assert [a.phase for a in alerts] == [AlertPhase.START, AlertPhase.END]
    start, end = alerts
    assert start.detail.startswith("2 person") and start.start_s == pytest.approx(out[0].end_s)
    # it ended at the first window without people, not when the source ended
    assert end.end_s == pytest.approx(min(w.end_s for w in out if w.end_s > 2.5))
