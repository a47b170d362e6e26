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


SPIN_WAIT_US = 200  # default: how long an ONNX Runtime worker out of work spins before it sleeps
_spin_wait_us = SPIN_WAIT_US


def set_spin_wait_us(us: int) -> None:
    """For every session made from now on in this process (``[engine] spin_wait_us``): how long
    an ONNX Runtime worker thread out of work spins before it sleeps, in µs (0: never spins)."""
    global _spin_wait_us
    if us < 0:
        raise ValueError(f"spin_wait_us must be 0 or more, not {us}")
    _spin_wait_us = int(us)


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
    # bounded spin-waiting: a worker thread out of work spins at most _spin_wait_us before it
    # sleeps. That covers the gaps between the operators of one call and between a decoder's
    # calls (a sleeping worker needs a wake-up per operator), while between windows the threads
    # sleep: ORT's default spinning burns a core per thread long after each call, on a machine
    # shared by many streams and engines
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if _spin_wait_us else "0")
    if _spin_wait_us:
        opts.add_session_config_entry("session.intra_op.spin_duration_us", str(_spin_wait_us))
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


def _host(value) -> np.ndarray:
    """A numpy array for an OrtValue (a copy) or an array."""
    return value if isinstance(value, np.ndarray) else value.numpy()


# ONNX TensorProto data types → numpy (the ones exported weights use)
_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 10: np.float16,
                11: np.float64}
SHARE_MIN_BYTES = 1 << 12  # smaller initializers are not worth sharing


def _varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf, start: int, end: int):
    """Protobuf wire-format fields of ``buf[start:end]``: (number, value or (offset, end))."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            n, i = _varint(buf, i)
            yield number, (i, i + n)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _initializers(buf) -> dict[str, tuple[int, tuple[int, ...], int, int]]:
    """The raw-data initializers of a serialized ModelProto: name → (data type, dims, offset, end).
    A few lines of protobuf reading instead of the ``onnx`` package (not a runtime dependency)."""
    out = {}
    for number, value in _fields(buf, 0, len(buf)):
        if number != 7:  # ModelProto.graph
            continue
        for gnum, gval in _fields(buf, *value):
            if gnum != 5:  # GraphProto.initializer
                continue
            name, dtype, dims, raw, external = "", 0, [], None, False
            for tnum, tval in _fields(buf, *gval):
                if tnum == 1:  # dims: one varint each, or packed
                    if isinstance(tval, tuple):
                        j = tval[0]
                        while j < tval[1]:
                            d, j = _varint(buf, j)
                            dims.append(d)
                    else:
                        dims.append(tval)
                elif tnum == 2:
                    dtype = tval
                elif tnum == 8:
                    name = bytes(buf[tval[0]:tval[1]]).decode()
                elif tnum == 9:
                    raw = tval
                elif tnum == 14:
                    external = tval == 1
            if raw is not None and not external and dtype in _ONNX_DTYPES:
                out[name] = (dtype, tuple(dims), *raw)
    return out


def shared_initializers(paths: Sequence[os.PathLike | str]) -> tuple[list[dict[str, object]], list]:
    """Initializers that are byte for byte the same in several graphs (the decoder weights of the
    prefill and step graphs), as one OrtValue each: per graph ``{initializer name: OrtValue}`` for
    ``SessionOptions.add_initializer``, and the objects that must stay alive while the sessions
    live. The values are read-only views of the first graph file, memory-mapped: one copy in
    memory, shared with the page cache, instead of one per session."""
    import hashlib
    import mmap

    from onnxruntime import OrtValue

    found: list[dict[str, tuple]] = []
    maps, digests = [], {}
    for path in paths:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            maps.append(mm)
            keys = {}
            for name, (dtype, dims, start, end) in _initializers(mm).items():
                if end - start < SHARE_MIN_BYTES:
                    continue
                # hashed through small reads, not the map: pages of a graph whose values are not
                # kept would otherwise count in this process's resident (and peak) memory
                h = hashlib.blake2b(digest_size=16)
                for at in range(start, end, 1 << 22):
                    h.update(os.pread(f.fileno(), min(1 << 22, end - at), at))
                key = (dtype, dims, h.digest())
                digests.setdefault(key, (len(maps) - 1, start, end))
                keys[name] = key
        found.append(keys)
    counts: dict = {}
    for keys in found:
        for key in set(keys.values()):
            counts[key] = counts.get(key, 0) + 1
    values: dict = {}
    per_graph: list[dict[str, object]] = []
    for keys in found:
        named = {}
        for name, key in keys.items():
            if counts[key] < 2:
                continue
            if key not in values:
                i, start, end = digests[key]
                arr = np.frombuffer(maps[i], dtype=_ONNX_DTYPES[key[0]], count=(end - start) // np.dtype(
                    _ONNX_DTYPES[key[0]]).itemsize, offset=start).reshape(key[1])
                values[key] = (arr, OrtValue.ortvalue_from_numpy(arr))
            named[name] = values[key][1]
        per_graph.append(named)
    used = {digests[k][0] for k in values}
    for i, mm in enumerate(maps):
        if i not in used:
            mm.close()
    return per_graph, [maps[i] for i in sorted(used)] + list(values.values())


class OnnxCaptionEngine(WindowEngine):
    """A ``CaptionEngine`` on ONNX Runtime (CPU by default).

    On the CPU, an engine folder with a ``decoder_unified`` graph (the prefill and the step in one
    graph, written by the GIT exporter) runs prefill and steps in one session: the decoder weights
    are held once, pre-packed for the CPU kernels.

    ``share_decoder_weights`` (folders without that graph, CPU only): the prefill and step
    sessions hold one copy of the decoder weights instead of one each (``None``: for fp32
    engines, where it saves the most, e.g. 360 MB for GIT-base). It costs speed, since shared
    weights are not pre-packed for the CPU kernels (on the benchmark model about 7 % per fp32
    window, and far more for int8: its quantised GEMMs need their packed weights, hence not by
    default there)."""

    def __init__(self, path: str | os.PathLike, *, provider: str = "cpu", providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, verify_hashes: bool = True,
                 frame_cache_size: int = 256, provider_options: dict | None = None,
                 trt_cache_dir: str | os.PathLike | None = None, share_decoder_weights: bool | None = None) -> None:
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
            self._prefill, self._step = self._decoder_sessions(
                m, lambda: session_setup(m, provider=provider, providers=providers, intra_op_threads=intra_op_threads,
                                         provider_options=provider_options, trt_cache_dir=trt_cache_dir)[0],
                chosen, share=providers == ["CPUExecutionProvider"] and (
                    m.precision == "fp32" if share_decoder_weights is None else share_decoder_weights))
            self._vision = _session(m.path(m.graphs["vision_encoder"]), opts, chosen)
            self._tok = Tokenizer.from_file(str(m.path(m.tokenizer)))
        except Exception as e:  # onnxruntime raises its own exception types; one boundary here
            raise EngineLoadError(f"could not load engine {path}: {e}") from e
        self.providers = providers
        self.cache = FrameFeatureCache(frame_cache_size if m.encoder_mode == "frame" else 0)
        kinds = ("key", "value")
        self._self_names = [f"{k}_{i}" for i in range(m.num_layers) for k in kinds]
        self._cross_names = [f"cross_{k}_{i}" for i in range(m.num_layers) for k in kinds] if m.cross_attention else []
        if self._unified:  # (heads, head size) of the cache, for the prefill's empty one
            shape = {i.name: i.shape for i in self._prefill.get_inputs()}[f"past_{self._self_names[0]}"]
            self._cache_dims = (int(shape[1]), int(shape[3]))
        self._prefill_outputs = [o.name for o in self._prefill.get_outputs()]
        self._step_outputs = [o.name for o in self._step.get_outputs()]
        self.vision_frames_encoded = 0
        self.debug_logits: list[np.ndarray] | None = None  # a list collects every raw logits array (tests)
        log.info("engine %s loaded from %s (%s, %s, K=%d, %dpx, %s)", self.name, path, ",".join(providers),
                 m.precision, self.frames_per_window, self.preprocessing.image_size,
                 "unified decoder" if self._unified else "prefill + step decoder")

    def _decoder_sessions(self, m, make_opts, chosen, *, share: bool):
        """The decoder's sessions, as (prefill, step). On the CPU with a ``decoder_unified``
        graph, one session that is both: the decoder weights once, pre-packed. Otherwise the
        prefill and step graphs' sessions; with ``share`` they hold one copy of the decoder weights
        between them (``shared_initializers``), not one each, and do not pre-pack them (a
        pre-packed copy per session would undo the sharing)."""
        self._shared_keepalive: list = []
        self._unified = ("decoder_unified" in m.graphs and not m.cross_attention
                         and all(p == "CPUExecutionProvider" for p, _ in chosen))
        if self._unified:
            # with its arena: the graph computes image attention a frame at a time, so the
            # prefill's largest buffers are small enough to keep (and a step reuses them)
            session = _session(m.path(m.graphs["decoder_unified"]), make_opts(), chosen)
            return [session, session]
        step = m.graphs["decoder_step"]
        paths = [m.path(m.graphs["decoder_prefill"]), m.path(step)]
        shared: list[dict] = [{}, {}]
        if share:
            shared, self._shared_keepalive = shared_initializers(paths)
        sessions = []
        for path, values in zip(paths, shared):
            opts = make_opts()
            if values:
                opts.add_session_config_entry("session.disable_prepacking", "1")
                if path == paths[0]:
                    # the prefill's activations (attention scores over every image token) are the
                    # largest buffers: freed after each call instead of kept in an arena
                    opts.enable_cpu_mem_arena = False
            for name, value in values.items():
                opts.add_initializer(name, value)
            sessions.append(_session(path, opts, chosen))
        return sessions

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
        # IO binding: the cache stays in ONNX Runtime's OrtValues from the prefill through every
        # step (each step's present cache is bound as the next step's past), never copied out to
        # numpy and back; only the logits are read on the host
        feed = {"features": feats, "input_ids": ids}
        if self._unified:  # the prefill is the unified graph's call with no cache yet
            heads, head_dim = self._cache_dims
            empty = np.zeros((len(windows), heads, 0, head_dim), np.float32)
            feed.update({f"{part}_{n}": empty for part in ("past", "text") for n in self._self_names})
        out = self._run_bound(self._prefill, feed, self._prefill_outputs)
        logits = out[0].numpy()
        cache = dict(zip(self._self_names + self._cross_names, out[1:]))
        if self.debug_logits is not None:
            self.debug_logits.append(logits)
        state = {"self": [cache[n] for n in self._self_names], "cross": [cache[n] for n in self._cross_names]}
        if self._unified:
            return self._results(self._decode_unified(logits, prompt_ids, state["self"], opts, feats.shape[2:]))

        def step(tokens: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
            if parents is not None:  # beam search: rows continue from other rows (host copies)
                state["self"] = [_host(c)[parents] for c in state["self"]]
                state["cross"] = [_host(c)[parents] for c in state["cross"]]
            feed = {"input_ids": tokens.reshape(-1, 1).astype(np.int64)}
            feed.update({f"past_{n}": c for n, c in zip(self._self_names, state["self"])})
            feed.update({n: c for n, c in zip(self._cross_names, state["cross"])})
            logits, state["self"] = self._step_once(feed)
            return logits

        m = self.manifest
        hyps = decode(logits, prompt_ids, step, opts, eos_id=m.eos_token_id, pad_id=m.pad_token_id)
        return self._results(hyps)

    def _decode_unified(self, logits: np.ndarray, prompt_ids: list[int], prefix: list, opts,
                        frame_shape: tuple[int, ...]) -> list:
        """Decoding on the unified graph: each step is its call with no frames (``frame_shape``:
        a frame's (tokens, width)); the prefill's cache (``prefix``) is bound as it is at every
        step, and only the generated tokens' cache (``text_*``) grows, instead of the whole cache
        concatenated anew at every token."""
        m = self.manifest
        b, h, _, hd = prefix[0].shape()
        state = {"prefix": prefix, "text": [np.zeros((b, h, 0, hd), np.float32) for _ in self._self_names]}

        def step(tokens: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
            if parents is not None:  # beam search: rows continue from other rows (host copies)
                if not np.array_equal(parents, np.arange(len(parents))):
                    state["prefix"] = [_host(c)[parents] for c in state["prefix"]]
                state["text"] = [_host(c)[parents] for c in state["text"]]
            feed = {"features": np.zeros((len(tokens), 0, *frame_shape), np.float32),
                    "input_ids": tokens.reshape(-1, 1).astype(np.int64)}
            feed.update({f"past_{n}": c for n, c in zip(self._self_names, state["prefix"])})
            feed.update({f"text_{n}": c for n, c in zip(self._self_names, state["text"])})
            logits, state["text"] = self._step_once(feed)
            return logits

        return decode(logits, prompt_ids, step, opts, eos_id=m.eos_token_id, pad_id=m.pad_token_id)

    def _step_once(self, feed: dict) -> tuple[np.ndarray, list]:
        """One decoder step: the logits on the host and the step's present cache (OrtValues)."""
        res = self._run_bound(self._step, feed, self._step_outputs)
        logits = res[0].numpy()
        if self.debug_logits is not None:
            self.debug_logits.append(logits)
        return logits, res[1:]

    @staticmethod
    def _run_bound(session, feed: dict, outputs: Sequence[str]) -> list:
        """Run ``session`` with IO binding: numpy arrays or OrtValues in, OrtValues out (allocated
        by ONNX Runtime on the host; nothing is copied to numpy)."""
        binding = session.io_binding()
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def close(self) -> None:
        self._vision = self._prefill = self._step = None  # type: ignore[assignment]
        self._shared_keepalive = []
        self.cache.clear()
