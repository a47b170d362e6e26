"""What every runtime engine (ONNX Runtime, native TensorRT) does the same way around its graphs:
window checks, clip sampling, prompt ids, the frame-feature cache, decoding options and caption
text. A runtime subclasses :class:`WindowEngine`, sets the attributes listed there and implements
``_run_vision`` (pixel values → features on the host).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from streamcap.engine.decoding import DecodeOptions, Hypothesis
from streamcap.engine.framecache import content_key
from streamcap.engine.preprocess import preprocess_frames
from streamcap.core.errors import EngineError
from streamcap.core.types import CaptionResult


def sample_indices(n: int, k: int) -> list[int]:
    """K frame indices spread over n frames: the centre of each of K equal segments."""
    if n < 1:
        raise EngineError("no frames to caption")
    return [min(n - 1, int((i + 0.5) * n / k)) for i in range(k)]


class WindowEngine:
    """Base of the runtime engines. Subclasses set ``name``, ``manifest``, ``frames_per_window``,
    ``preprocessing``, ``cache`` (a FrameFeatureCache), ``_tok`` and ``vision_frames_encoded``."""

    def _run_vision(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) in frame mode or (B, K, 3, S, S) in clip mode → features, on the host."""
        raise NotImplementedError

    def caption(self, frames: Sequence[np.ndarray], prompt: str | None = None,
                max_new_tokens: int | None = None, **decode_options) -> CaptionResult:
        """Caption one clip: RGB uint8 frames (H×W×3, any size and count; K are sampled evenly)."""
        frames = list(frames)
        picked = [frames[i] for i in sample_indices(len(frames), self.frames_per_window)]
        return self.caption_batch([picked], prompt=prompt, max_new_tokens=max_new_tokens, **decode_options)[0]

    def encode_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 frames → per-frame features (N, T, D) (frame mode), no cache."""
        px = preprocess_frames(frames, self.preprocessing)
        self.vision_frames_encoded += len(frames)
        return self._run_vision(px)

    def _check_windows(self, windows: Sequence[Sequence[np.ndarray]]) -> None:
        k = self.frames_per_window
        for w in windows:
            if len(w) != k:
                raise EngineError(f"engine {self.name} needs {k} frames per window, got {len(w)}")

    def _decode_options(self, max_new_tokens: int | None, decode_options: dict) -> DecodeOptions:
        return DecodeOptions(max_new_tokens=max_new_tokens or self.manifest.max_new_tokens, **decode_options)

    def _prompt_ids(self, prompt: str | None) -> list[int]:
        ids = [self.manifest.bos_token_id]
        if prompt:
            ids += self._tok.encode(prompt, add_special_tokens=False).ids
        return ids

    def _results(self, hyps: Sequence[Hypothesis]) -> list[CaptionResult]:
        return [CaptionResult(text=self._tok.decode(list(h.tokens), skip_special_tokens=True).strip(),
                              score=h.score) for h in hyps]

    def _window_features(self, windows: Sequence[Sequence[np.ndarray]],
                         keys: Sequence[Sequence[Hashable]] | None) -> np.ndarray:
        """Vision features for a batch: (B, K, T, D) in frame mode, each frame looked up in the
        cache first and the missing ones encoded together; (B, T, D) in clip mode."""
        b, k = len(windows), self.frames_per_window
        if self.manifest.encoder_mode == "clip":
            px = preprocess_frames([f for w in windows for f in w], self.preprocessing)
            self.vision_frames_encoded += b * k
            return self._run_vision(px.reshape(b, k, *px.shape[1:]))
        flat = [f for w in windows for f in w]
        flat_keys = [kk for wk in keys for kk in wk] if keys is not None else [content_key(f) for f in flat]
        if len(flat_keys) != len(flat):
            raise EngineError("keys must name every frame of every window")
        found: dict[Hashable, np.ndarray] = {}
        todo: dict[Hashable, np.ndarray] = {}
        for key, frame in zip(flat_keys, flat):
            if key in found or key in todo:
                continue
            hit = self.cache.get(key)
            if hit is not None:
                found[key] = hit
            else:
                todo[key] = frame
        if todo:
            for key, f in zip(todo, self.encode_frames(list(todo.values()))):
                found[key] = f
                self.cache.put(key, f)
        feats = np.stack([found[key] for key in flat_keys])
        return feats.reshape(b, k, *feats.shape[1:])
