"""The ``CaptionEngine`` protocol: a batch of windows in, one caption per window out.

Engines are synchronous and blocking; the pipeline calls them from a dedicated executor
thread, never on the event loop. An engine instance is used by one thread at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from streamcap.engine.preprocess import Preprocessing
from streamcap.core.types import CaptionResult


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
    """Load ``cfg.path`` (an ``EngineConfig``) with its runtime settings."""
    import os

    apply_runtime_settings(cfg)
    options: dict = {"provider": cfg.provider, "frame_cache_size": cfg.frame_cache_frames}
    if cfg.provider == "tensorrt-native":
        from streamcap.engine.trt_options import ProfileLimits

        options["cache_dir"] = os.path.expanduser(cfg.trt_cache_dir)
        options["limits"] = ProfileLimits(max_batch=cfg.max_batch, max_beams=max(4, cfg.num_beams),
                                          max_new_tokens=max(32, cfg.max_new_tokens or 0))
    else:
        options["intra_op_threads"] = cfg.threads or (os.cpu_count() or 1)
        if cfg.share_decoder_weights is not None:
            options["share_decoder_weights"] = cfg.share_decoder_weights
        if cfg.provider == "tensorrt":
            options["trt_cache_dir"] = os.path.expanduser(cfg.trt_cache_dir)
    return load_engine(cfg.path, **options)


def apply_runtime_settings(engine_cfg) -> None:
    """The process-wide ONNX Runtime settings of an ``EngineConfig`` (``[engine]``), before any
    engine of the process (caption, describer, speech) makes its sessions."""
    from streamcap.engine.onnx import set_spin_wait_us

    set_spin_wait_us(engine_cfg.spin_wait_us)


def load_describer_from_config(cfg, engine_cfg=None) -> CaptionEngine | None:
    """The scene describer of a ``DescriberConfig`` (``[describer]``), or None when its folder is
    not there. ``engine_cfg``: the ``[engine]`` section, for the provider."""
    from pathlib import Path

    from streamcap.engine.describer import DescriberEngine

    if not (Path(cfg.path).expanduser() / "engine.json").is_file():
        return None
    import os

    provider = getattr(engine_cfg, "provider", "cpu")
    if engine_cfg is not None:
        apply_runtime_settings(engine_cfg)
    return DescriberEngine(os.path.expanduser(cfg.path), provider="tensorrt" if provider == "tensorrt-native" else provider,
                           intra_op_threads=cfg.threads or (os.cpu_count() or 1), precision=cfg.precision,
                           frame_cache_size=cfg.frame_cache_frames, refresh_s=cfg.refresh_s or None)


def wants_describer(config) -> bool:
    """Whether some stream of ``config`` (a Config) may use the scene describer."""
    return config.pipeline.video_engine != "caption" or any(s.engine not in (None, "caption") for s in config.sources)


def decode_options_from_config(cfg) -> dict:
    """The decoding keywords of ``caption_batch`` from an ``EngineConfig``."""
    opts: dict = {"num_beams": cfg.num_beams, "repetition_penalty": cfg.repetition_penalty, "prompt": cfg.prompt}
    if cfg.max_new_tokens is not None:
        opts["max_new_tokens"] = cfg.max_new_tokens
    return opts


def load_engine(path: str, *, provider: str = "cpu", **options) -> CaptionEngine:
    """Load an engine folder by its manifest (``engine.json``). ``provider``: ``cpu``, ``cuda`` or
    ``tensorrt`` (ONNX Runtime execution providers) or ``tensorrt-native`` (TensorRT engines built
    from the graphs and cached on disk). A scene-describer folder (kind ``describer``) loads a
    :class:`~streamcap.engine.describer.DescriberEngine` (ONNX Runtime; ``tensorrt-native`` runs
    it on the TensorRT provider)."""
    from streamcap.engine.describer import DescriberEngine, describer_kind

    if describer_kind(path):
        if provider == "tensorrt-native":
            provider = "tensorrt"
        options = {k: v for k, v in options.items() if k in ("intra_op_threads", "frame_cache_size", "precision")}
        return DescriberEngine(path, provider=provider, **options)
    if provider == "tensorrt-native":
        from streamcap.engine.tensorrt import TensorRTCaptionEngine

        return TensorRTCaptionEngine(path, **options)
    from streamcap.engine.onnx import OnnxCaptionEngine

    return OnnxCaptionEngine(path, provider=provider, **options)
