"""ONNX Runtime caption engine for GIT-style engine folders.

Runs ``vision_encoder.onnx`` on every frame of a batch of windows, then greedy-decodes with
``text_decoder.onnx`` (no KV cache yet: each step re-runs the decoder over the prefix; the
graphs are tiny for the demo model). Blocking; call from an executor thread. Not thread-safe:
one caller at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from streamcap.engine.manifest import load_manifest
from streamcap.engine.preprocess import preprocess_frames
from streamcap.errors import EngineError, EngineLoadError
from streamcap.types import CaptionResult

log = logging.getLogger(__name__)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class OnnxCaptionEngine:
    """A ``CaptionEngine`` on ONNX Runtime (CPU by default)."""

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, verify_hashes: bool = True) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.manifest = m = load_manifest(path, verify_hashes=verify_hashes)
        if m.architecture != "git":
            raise EngineLoadError(f"{path}: architecture {m.architecture!r} is not supported by this "
                                  "runtime (supported: git)")
        self.name = m.name
        self.frames_per_window = m.frames_per_window
        self.window_s = m.window_s
        self.preprocessing = m.preprocessing
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in available]
        if missing:
            raise EngineLoadError(f"ONNX Runtime execution provider(s) {missing} not available here "
                                  f"(available: {available})")
        try:
            self._vision = ort.InferenceSession(str(m.path(m.graphs["vision_encoder"])), opts,
                                                providers=providers)
            self._decoder = ort.InferenceSession(str(m.path(m.graphs["text_decoder"])), opts,
                                                 providers=providers)
            self._tok = Tokenizer.from_file(str(m.path(m.tokenizer)))
        except Exception as e:  # onnxruntime raises its own exception types; one boundary here
            raise EngineLoadError(f"could not load engine {path}: {e}") from e
        log.info("engine %s loaded from %s (%s, K=%d, %dpx)", self.name, path, ",".join(providers),
                 self.frames_per_window, self.preprocessing.image_size)

    # ------------------------------------------------------------------ public

    def encode_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 frames → per-frame features (N, T, D)."""
        px = preprocess_frames(frames, self.preprocessing)
        return self._vision.run(["frame_features"], {"pixel_values": px})[0]

    def caption_batch(self, windows: Sequence[Sequence[np.ndarray]],
                      max_new_tokens: int | None = None) -> list[CaptionResult]:
        if not windows:
            return []
        k = self.frames_per_window
        for w in windows:
            if len(w) != k:
                raise EngineError(f"engine {self.name} needs {k} frames per window, got {len(w)}")
        flat = [f for w in windows for f in w]
        feats = self.encode_frames(flat)
        feats = feats.reshape(len(windows), k, *feats.shape[1:])
        return self._greedy(feats, max_new_tokens or self.manifest.max_new_tokens)

    def close(self) -> None:
        self._vision = None  # type: ignore[assignment]
        self._decoder = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ decoding

    def _greedy(self, feats: np.ndarray, max_new_tokens: int) -> list[CaptionResult]:
        m = self.manifest
        b = feats.shape[0]
        ids = np.full((b, 1), m.bos_token_id, dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        logp_sum = np.zeros(b, dtype=np.float64)
        n_tok = np.zeros(b, dtype=np.int64)
        for _ in range(max_new_tokens):
            logits = self._decoder.run(["logits"], {"frame_features": feats, "input_ids": ids})[0][:, -1]
            lp = _log_softmax(logits.astype(np.float64))
            nxt = lp.argmax(axis=-1)
            live = ~done
            logp_sum[live] += lp[np.arange(b), nxt][live]
            n_tok[live] += 1
            nxt = np.where(done, m.pad_token_id, nxt)
            ids = np.concatenate([ids, nxt[:, None].astype(np.int64)], axis=1)
            done |= nxt == m.eos_token_id
            if done.all():
                break
        out = []
        for i in range(b):
            toks = [t for t in ids[i, 1:].tolist() if t not in (m.eos_token_id, m.pad_token_id)]
            if m.eos_token_id in ids[i, 1:]:
                cut = ids[i, 1:].tolist().index(m.eos_token_id)
                toks = [t for t in ids[i, 1:1 + cut].tolist() if t != m.pad_token_id]
            text = self._tok.decode(toks, skip_special_tokens=True).strip()
            out.append(CaptionResult(text=text, score=float(logp_sum[i] / max(1, n_tok[i]))))
        return out
