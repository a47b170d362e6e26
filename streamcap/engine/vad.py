"""Voice activity detection: Silero VAD (v5/v6 ONNX graph) on ONNX Runtime, streaming.

``SileroVad(path)`` takes mono float32 samples at 16 kHz in pieces of any length and returns one
speech probability per complete 512-sample chunk (32 ms). It carries what the graph needs between
calls, as silero-vad's own ``OnnxWrapper`` does: the samples short of a chunk, the recurrent state
``(2, 1, 128)`` and the last 64 samples of the previous chunk, which are prepended to each chunk
(the graph's input is ``(1, 64 + 512)``). ``reset()`` forgets all three (a new stream, or a gap).

``path`` is the ``silero_vad.onnx`` file or an engine folder holding it with its ``engine.json``
(``format: streamcap-vad``, written by ``streamcap models install silero-vad``).

Not thread-safe: one instance per audio stream, called from one thread (the session itself runs on
one intra-op thread; Silero needs ~0.005 s per second of audio).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from streamcap.core.errors import EngineLoadError
from streamcap.engine.manifest import MANIFEST_NAME, file_sha256

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)
VAD_FORMAT = "streamcap-vad"
MODEL_FILE = "silero_vad.onnx"


def _model_path(path: Path, verify_hash: bool) -> Path:
    if path.is_file():
        return path
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise EngineLoadError(f"{path} is neither a Silero VAD .onnx file nor a VAD engine folder "
                              "(install one: streamcap models install silero-vad)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EngineLoadError(f"{mpath} cannot be read: {e}") from e
    if manifest.get("format") != VAD_FORMAT:
        raise EngineLoadError(f"{mpath}: not a VAD manifest (format {manifest.get('format')!r})")
    for key, want in (("sample_rate", SAMPLE_RATE), ("chunk_samples", CHUNK_SAMPLES),
                      ("context_samples", CONTEXT_SAMPLES), ("state_shape", list(STATE_SHAPE))):
        if manifest.get(key) != want:
            raise EngineLoadError(f"{mpath}: {key} is {manifest.get(key)!r}; this reader runs {want}")
    model = path / str(manifest.get("model", MODEL_FILE))
    if not model.is_file():
        raise EngineLoadError(f"{path}: the manifest names {model.name} but it is missing")
    digest = (manifest.get("files") or {}).get(model.name)
    if verify_hash and digest and file_sha256(model) != digest:
        raise EngineLoadError(f"{model} does not match its sha256 in {MANIFEST_NAME} (corrupt copy?)")
    return model


class SileroVad:
    """Streaming speech probabilities from Silero VAD; see the module docstring."""

    def __init__(self, path: str | Path, *, verify_hash: bool = True) -> None:
        import onnxruntime as ort

        self.model_path = _model_path(Path(path), verify_hash)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # boundary: onnxruntime's errors on a bad file become one load error
            raise EngineLoadError(f"cannot load {self.model_path}: {e}") from e
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise EngineLoadError(f"{self.model_path}: inputs {sorted(names)} are not Silero VAD v5/v6's "
                                  "(input, state, sr)")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the carried samples, the recurrent state and the context."""
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending_samples(self) -> int:
        """Samples received but not yet in a complete chunk."""
        return int(self._pending.size)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability (0..1) of each 512-sample chunk completed by ``samples`` (mono float32
        in [-1, 1] at 16 kHz), in order; fewer samples than a chunk give an empty array."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = buf.size // CHUNK_SAMPLES
        out = np.empty(n, dtype=np.float32)
        frame = np.empty((1, CONTEXT_SAMPLES + CHUNK_SAMPLES), dtype=np.float32)
        for i in range(n):
            chunk = buf[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES]
            frame[0, :CONTEXT_SAMPLES] = self._context
            frame[0, CONTEXT_SAMPLES:] = chunk
            prob, state = self._session.run(None, {"input": frame, "state": self._state, "sr": self._sr})
            self._state = np.asarray(state, dtype=np.float32).reshape(STATE_SHAPE)
            self._context = chunk[-CONTEXT_SAMPLES:].copy()
            out[i] = float(np.asarray(prob).reshape(-1)[0])
        self._pending = buf[n * CHUNK_SAMPLES:].copy()
        return out
