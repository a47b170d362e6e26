"""The ``CaptionEngine`` protocol: a batch of windows in, one caption per window out.

Engines are synchronous and blocking; the pipeline calls them from a dedicated executor
thread, never on the event loop. An engine instance is used by one thread at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from streamcap.engine.preprocess import Preprocessing
from streamcap.types import CaptionResult


@runtime_checkable
class CaptionEngine(Protocol):
    name: str
    frames_per_window: int
    window_s: float  # the window length the model was trained for
    preprocessing: Preprocessing

    def caption_batch(self, windows: Sequence[Sequence[np.ndarray]], *, keys=None,
                      **options) -> list[CaptionResult]:
        """Caption each window: a sequence of ``frames_per_window`` RGB uint8 frames (any size;
        frames already at the model's input size skip the resize). ``keys`` name each frame for the
        frame-feature cache (``None``: content hashes)."""
        ...

    def caption(self, frames: Sequence[np.ndarray], prompt: str | None = None,
                max_new_tokens: int | None = None, **options) -> CaptionResult:
        """Caption one clip of any number of frames (``frames_per_window`` are sampled evenly)."""
        ...

    def close(self) -> None: ...


def load_engine_from_config(cfg) -> CaptionEngine:
    """Load ``cfg.path`` (an ``EngineConfig``) with its thread setting (0 = all cores)."""
    import os

    return load_engine(cfg.path, intra_op_threads=cfg.threads or (os.cpu_count() or 1))


def load_engine(path: str, **options) -> CaptionEngine:
    """Load an engine folder by its manifest (``engine.json``)."""
    from streamcap.engine.onnx import OnnxCaptionEngine

    return OnnxCaptionEngine(path, **options)
