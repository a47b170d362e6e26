"""The replay driver: recorded frames through a StreamProcessor on simulated time, with the fake
engine: every window captioned, the stream ended, the same events every time."""

from __future__ import annotations

import numpy as np

from streamcap.core.events import CaptionEvent, ProgressEvent, StatusEvent
from streamcap.core.processor import ProcessorSettings, StabilizerSettings, StreamProcessor, TrackSettings
from streamcap.core.types import CaptionState, Frame, StreamState
from streamcap.engine.fake import COLOURS, FakeEngine
from streamcap.runtime.replay import replay

SIZE, FPS = 16, 10


def recorded(colours: list[str], seconds_each: float) -> list[Frame]:
    frames = []
    for colour in colours:
        for _ in range(round(seconds_each * FPS)):
            image = np.empty((SIZE, SIZE, 3), np.uint8)
            image[:] = COLOURS[colour]
            pts = len(frames) / FPS
            frames.append(Frame("rec", len(frames), 123, pts, image))  # capture time is replaced by pts
    return frames


def processor() -> StreamProcessor:
    video = TrackSettings("video", 1.0, 0.5, 4, StabilizerSettings(agree=2, fresh_agree=None))
    return StreamProcessor(ProcessorSettings("rec", live=False, frame_shape=(SIZE, SIZE, 3), ring_capacity=64,
                                             max_ingest_fps=FPS, max_backlog=None, cut_diff=8.0,
                                             tracks=(video,), collect_finals=True))


def test_replay_captions_every_window_and_ends_the_stream():
    frames = recorded(["red", "white", "blue"], 4.0)
    run = replay(frames, processor(), FakeEngine(frames_per_window=4, image_size=SIZE))
    finals = [e.caption.text for e in run.events
              if isinstance(e, CaptionEvent) and e.caption.state is CaptionState.FINAL]
    assert finals == ["a red picture", "a white picture", "a blue picture"]
    assert len(run.results) == sum(isinstance(e, ProgressEvent) for e in run.events) >= 20
    assert [e.status.state for e in run.events if isinstance(e, StatusEvent)] == [StreamState.ENDED]
    assert [c.text for c in run.processor.finals()] == finals
    assert run.frames == len(frames)


def test_replay_is_deterministic():
    def once():
        run = replay(recorded(["green", "yellow"], 3.0), processor(), FakeEngine(frames_per_window=4,
                                                                                 image_size=SIZE))
        return [(type(e).__name__, getattr(e, "caption", None)) for e in run.events]

    assert once() == once()
