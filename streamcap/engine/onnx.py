"""ONNX Runtime caption engine for engine folders (format 2, docs/engine-format.md).

One vision encoder call for the frames not in the frame cache, one prefill call per batch, then
one cached decoder step per token (greedy or beam search, streamcap.engine.decoding). Blocking;
call from one executor thread. Not thread-safe: one caller at a time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from streamcap.engine.decoding import decode
from streamcap.engine.framecache import FrameFeatureCache
from streamcap.engine.manifest import load_manifest
from streamcap.engine.windows import WindowEngine
from streamcap.core.errors import EngineLoadError
from streamcap.core.types import CaptionResult

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def _session(path, opts, providers):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), opts, providers=providers)


def session_setup(manifest, *, provider: str, providers: Sequence[str] | None, intra_op_threads: int | None,
                  provider_options: dict | None, trt_cache_dir: str | os.PathLike | None):
    """ONNX Runtime session options and the chosen ``[(provider, options)]`` for an engine folder's
    graphs (its ``manifest``: precision and folder key the TensorRT cache). Raises EngineLoadError
    for an unknown or unavailable provider. Shared by the caption and speech engines."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    # no spin-waiting: between calls ORT's worker threads would otherwise burn a core each
    # looking for work (a machine shared by many streams and engines needs those cycles)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    available = ort.get_available_providers()
    if providers is None:
        if provider not in PROVIDERS:
            raise EngineLoadError(f"unknown engine provider {provider!r} (choose from {', '.join(PROVIDERS)})")
        providers = PROVIDERS[provider]
    providers = list(providers)
    missing = [p for p in providers if p not in available]
    if missing:
        hint = (" (install the gpu extra: pip install 'streamcap[gpu]', on a machine with an NVIDIA GPU)"
                if any(p != "CPUExecutionProvider" for p in missing) else "")
        raise EngineLoadError(f"ONNX Runtime execution provider(s) {missing} not available here "
                              f"(available: {available}){hint}")
    provider_options = dict(provider_options or {})
    if "TensorrtExecutionProvider" in providers and "TensorrtExecutionProvider" not in provider_options:
        from streamcap.engine.trt_options import manifest_digest, tensorrt_provider_options

        cache = Path(trt_cache_dir or Path.home() / ".cache" / "streamcap" / "trt")
        trt_opts = tensorrt_provider_options(cache, manifest_digest(manifest.folder),
                                             fp16=manifest.precision == "fp16", ort_version=ort.__version__)
        Path(trt_opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        provider_options["TensorrtExecutionProvider"] = trt_opts
    return opts, providers, [(p, provider_options.get(p, {})) for p in providers]


class OnnxCaptionEngine(WindowEngine):
    """A ``CaptionEngine`` on ONNX Runtime (CPU by default)."""

    def __init__(self, path: str | os.PathLike, *, provider: str = "cpu", providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, verify_hashes: bool = True,
                 frame_cache_size: int = 256, provider_options: dict | None = None,
                 trt_cache_dir: str | os.PathLike | None = None) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise EngineLoadError("ONNX Runtime is not installed: pip install 'streamcap[cpu]' "
                                  "(or 'streamcap[gpu]' on an NVIDIA GPU)")
        from tokenizers import Tokenizer

        self.manifest = m = load_manifest(path, verify_hashes=verify_hashes)
        self.name = m.name
        self.frames_per_window = m.frames_per_window
        # the trained spacing (both ends, window/(K-1) apart) kept on the stream's grid of that
        # step, so overlapping windows pick the same frames and the frame-feature cache hits
        self.frame_sampling = "aligned"
        self.window_s = m.window_s
        self.preprocessing = m.preprocessing
        opts, providers, chosen = session_setup(m, provider=provider, providers=providers,
                                                intra_op_threads=intra_op_threads,
                                                provider_options=provider_options, trt_cache_dir=trt_cache_dir)
        try:
            self._vision = _session(m.path(m.graphs["vision_encoder"]), opts, chosen)
            self._prefill = _session(m.path(m.graphs["decoder_prefill"]), opts, chosen)
            self._step = _session(m.path(m.graphs["decoder_step"]), opts, chosen)
            self._tok = Tokenizer.from_file(str(m.path(m.tokenizer)))
        except Exception as e:  # onnxruntime raises its own exception types; one boundary here
            raise EngineLoadError(f"could not load engine {path}: {e}") from e
        self.providers = providers
        self.cache = FrameFeatureCache(frame_cache_size if m.encoder_mode == "frame" else 0)
        kinds = ("key", "value")
        self._self_names = [f"{k}_{i}" for i in range(m.num_layers) for k in kinds]
        self._cross_names = [f"cross_{k}_{i}" for i in range(m.num_layers) for k in kinds] if m.cross_attention else []
        self.vision_frames_encoded = 0
        self.debug_logits: list[np.ndarray] | None = None  # a list collects every raw logits array (tests)
        log.info("engine %s loaded from %s (%s, %s, K=%d, %dpx)", self.name, path, ",".join(providers),
                 m.precision, self.frames_per_window, self.preprocessing.image_size)

    # ------------------------------------------------------------------ public

    def _run_vision(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._vision.run(["features"], {"pixel_values": pixel_values})[0]

    def caption_batch(self, windows: Sequence[Sequence[np.ndarray]], *, prompt: str | None = None,
                      keys: Sequence[Sequence[Hashable]] | None = None, max_new_tokens: int | None = None,
                      **decode_options) -> list[CaptionResult]:
        """Caption each window (exactly ``frames_per_window`` frames). ``keys`` name each frame for
        the frame cache (e.g. ``(stream, seq)``); without them a content hash is used."""
        if not windows:
            return []
        self._check_windows(windows)
        opts = self._decode_options(max_new_tokens, decode_options)
        feats = self._window_features(windows, keys)
        prompt_ids = self._prompt_ids(prompt)
        ids = np.tile(np.asarray(prompt_ids, dtype=np.int64), (len(windows), 1))
        out = self._prefill.run(None, {"features": feats, "input_ids": ids})
        logits, cache = out[0], dict(zip(self._self_names + self._cross_names, out[1:]))
        if self.debug_logits is not None:
            self.debug_logits.append(logits)
        state = {"self": [cache[n] for n in self._self_names], "cross": [cache[n] for n in self._cross_names]}

        def step(tokens: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
            if parents is not None:
                state["self"] = [c[parents] for c in state["self"]]
                state["cross"] = [c[parents] for c in state["cross"]]
            feed = {"input_ids": tokens.reshape(-1, 1).astype(np.int64)}
            feed.update({f"past_{n}": c for n, c in zip(self._self_names, state["self"])})
            feed.update({n: c for n, c in zip(self._cross_names, state["cross"])})
            res = self._step.run(None, feed)
            state["self"] = res[1:]
            if self.debug_logits is not None:
                self.debug_logits.append(res[0])
            return res[0]

        m = self.manifest
        hyps = decode(logits, prompt_ids, step, opts, eos_id=m.eos_token_id, pad_id=m.pad_token_id)
        return self._results(hyps)

    def close(self) -> None:
        self._vision = self._prefill = self._step = None  # type: ignore[assignment]
        self.cache.clear()
