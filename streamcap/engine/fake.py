"""A fake :class:`~streamcap.engine.base.CaptionEngine` for tests and replays: no model, no ONNX.

:class:`FakeEngine` captions a window with ``describe(frames)``, a plain function of the frames
it is given (by default the dominant colour of the middle frame: "a red picture", "a black
picture"). It really looks at the frames, so a scene change in the input changes its captions;
it is deterministic and takes microseconds, so the stream processor and the pipeline can be
tested and replayed on simulated time without a model. ``fail_on`` makes chosen calls raise
(engine-error paths). Never used to serve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from streamcap.core.errors import EngineError
from streamcap.core.types import CaptionResult
from streamcap.engine.preprocess import Preprocessing

COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 30, 30), "green": (30, 200, 30),
           "blue": (30, 30, 220), "yellow": (230, 220, 30), "grey": (128, 128, 128)}


def dominant_colour(image: np.ndarray) -> str:
    """The name in :data:`COLOURS` nearest to the image's mean colour."""
    mean = image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((mean - np.array(COLOURS[name])) ** 2)))


def describe_middle_frame(frames: Sequence[np.ndarray]) -> str:
    return f"a {dominant_colour(frames[len(frames) // 2])} picture"


class FakeEngine:
    """A deterministic engine: ``describe(frames) -> text`` per window (see the module doc)."""

    def __init__(self, describe: Callable[[Sequence[np.ndarray]], str] = describe_middle_frame, *,
                 name: str = "fake", window_s: float = 2.0, frames_per_window: int = 4, image_size: int = 32,
                 fail_on: Callable[[int], bool] | None = None) -> None:
        self.name = name
        self.window_s = window_s
        self.frames_per_window = frames_per_window
        self.preprocessing = Preprocessing(image_size)
        self._describe = describe
        self._fail_on = fail_on
        self.calls = 0
        self.windows_seen = 0

    def caption_batch(self, windows: Sequence[Sequence[np.ndarray]], *, keys=None, **options) -> list[CaptionResult]:
        self.calls += 1
        if self._fail_on is not None and self._fail_on(self.calls):
            raise EngineError(f"fake engine failure on call {self.calls}")
        self.windows_seen += len(windows)
        return [CaptionResult(self._describe(list(frames)), -0.1) for frames in windows]

    def caption(self, frames: Sequence[np.ndarray], prompt: str | None = None,
                max_new_tokens: int | None = None, **options) -> CaptionResult:
        return self.caption_batch([frames])[0]

    def close(self) -> None:
        pass
