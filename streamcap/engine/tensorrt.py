"""Native TensorRT caption engine (``engine.provider = "tensorrt-native"``).

NOT EXECUTED ON A GPU: this module was written against the TensorRT 10 and cuda-python
documentation on machines without an NVIDIA GPU or TensorRT. Only its "missing prerequisite"
path has run (tests/integration/test_tensorrt.py); the build/run paths are covered by the
``gpu``-marked tests, which skip here. Treat the first run on a GPU as its first test.

Constructor::

    TensorRTCaptionEngine(path, *, cache_dir=None, fp16=None, limits=None,
                          workspace_bytes=DEFAULT_WORKSPACE_BYTES, device=0, verify_hashes=True,
                          frame_cache_size=256, intra_op_threads=None)

- ``path``: an engine folder (docs/engine-format.md); fp32 or fp16 (int8 folders are ONNX Runtime
  dynamic quantisation, which TensorRT cannot parse: refused).
- ``cache_dir``: where serialised engines go (``engine.trt_cache_dir``; default
  ``~/.cache/streamcap/trt``). One file per graph, named by
  ``trt_options.engine_cache_key(GPU name, tensorrt.__version__, sha256 of engine.json, graph,
  precision, profile=limits)``, so a new GPU, TensorRT version, export or limit builds afresh and
  anything else loads in seconds. A TensorRT timing cache per GPU + version sits beside them.
- ``fp16``: build with TensorRT's FP16 flag; ``None`` = when the manifest's precision is fp16.
  fp32 builds also turn TF32 off, so they follow ONNX Runtime's CPU results closely.
- ``limits``: ``trt_options.ProfileLimits`` — the optimisation profile's largest batch, beam width,
  prompt and caption length. Larger batches are split; larger beams/prompts/captions raise
  EngineError (build again with larger limits).
- ``device``: the CUDA device index. ``intra_op_threads`` is accepted and ignored (ORT's option).

After loading, ``built_graphs`` / ``cached_graphs`` list which graphs were built now and which came
from the cache, ``engine_files`` maps graph → cache file and ``load_s`` is the load time.

Requirements: ``pip install 'streamcap[tensorrt]'`` (``tensorrt>=10`` and ``cuda-python>=12``) on a
machine with an NVIDIA GPU and driver. Without them the constructor raises EngineLoadError naming
what is missing. Imports of tensorrt and cuda-python happen inside the constructor only.

Device memory: cuda-python's CUDA runtime bindings (``cudart``), not torch — the ``export`` extra
pins a CPU-only torch, and cuda-python is a small dependency. All work runs on one CUDA stream;
buffers come from the stream-ordered allocator (``cudaMallocAsync``/``cudaFreeAsync``), so a
buffer freed right after a launch is released only once the launch has finished.

Decoding: the decoder's key/value cache stays on the GPU. ``present_*`` outputs of one step are
the ``past_*`` inputs of the next (no copy); beam search's row reorder is a device-to-device copy
per row (``_Cuda.gather_rows``). Logits come back to the host every step for
streamcap.engine.decoding. Blocking; one caller at a time (like OnnxCaptionEngine).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamcap.engine.decoding import decode
from streamcap.engine.framecache import FrameFeatureCache
from streamcap.engine.manifest import load_manifest
from streamcap.engine.trt_options import (
    DEFAULT_WORKSPACE_BYTES,
    ProfileLimits,
    default_cache_dir,
    engine_cache_key,
    manifest_digest,
    profile_shapes,
)
from streamcap.engine.windows import WindowEngine
from streamcap.core.errors import EngineError, EngineLoadError
from streamcap.core.types import CaptionResult

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'streamcap[tensorrt]' on a machine with an NVIDIA GPU and driver"
GRAPH_ORDER = ("vision_encoder", "decoder_prefill", "decoder_step")  # each needs sizes from the one before


def _import_cudart():
    """cuda-python's runtime bindings: ``cuda.bindings.runtime`` (12.6+) or ``cuda.cudart`` (older)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _ok(cudart, err) -> bool:
    return err == cudart.cudaError_t.cudaSuccess


def missing_prerequisites(device: int = 0) -> str | None:
    """``None`` when the native TensorRT engine can run here, else what is missing (one line)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer cannot load
        return f"the `tensorrt` Python package is not importable ({e})"
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 10:
        return f"TensorRT {getattr(trt, '__version__', '?')} is too old (streamcap needs TensorRT 10 or newer)"
    try:
        cudart = _import_cudart()
    except (ImportError, OSError) as e:
        return f"the `cuda-python` package is not importable ({e})"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except (RuntimeError, OSError) as e:  # a missing or broken libcudart surfaces here
        return f"the CUDA runtime could not be queried ({e})"
    if not _ok(cudart, err) or count < 1:
        return (f"no CUDA GPU is visible (cudaGetDeviceCount: {getattr(err, 'name', err)}, {count} device(s); "
                "check the NVIDIA driver and CUDA_VISIBLE_DEVICES)")
    if not 0 <= device < count:
        return f"CUDA device {device} does not exist ({count} visible)"
    return None


# ---------------------------------------------------------------- device memory (cuda-python)


@dataclass(eq=False)
class DeviceTensor:
    """A C-contiguous array in GPU memory, owned by a ``_Cuda`` (freed with ``_Cuda.free``)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class _Cuda:
    """The few CUDA runtime calls the engine needs: one stream, stream-ordered malloc/free and
    copies. Every cuda-python call returns ``(error, *results)``; errors become EngineError."""

    def __init__(self, cudart, device: int) -> None:
        self.rt = cudart
        self.device = device
        self.use_device()
        props = self.check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
        self.gpu_name = f"{str(name).strip()} sm{props.major}{props.minor}"
        self.stream = self.check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream_handle = int(self.stream)

    def check(self, result, what: str):
        err, *rest = result
        if not _ok(self.rt, err):
            raise EngineError(f"CUDA call {what} failed: {getattr(err, 'name', err)}")
        return rest[0] if len(rest) == 1 else (tuple(rest) or None)

    def use_device(self) -> None:
        """Make ``device`` current for the calling thread (the CUDA device is per thread)."""
        self.check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")

    def empty(self, shape: Sequence[int], dtype) -> DeviceTensor:
        t = DeviceTensor(0, tuple(int(d) for d in shape), np.dtype(dtype))
        t.ptr = int(self.check(self.rt.cudaMallocAsync(max(t.nbytes, 16), self.stream), "cudaMallocAsync"))
        return t

    def free(self, *tensors: DeviceTensor) -> None:
        for t in tensors:
            if t.ptr:
                self.check(self.rt.cudaFreeAsync(t.ptr, self.stream), "cudaFreeAsync")
                t.ptr = 0

    def upload(self, array: np.ndarray) -> DeviceTensor:
        """Host → device. ``array`` must stay alive until the stream is synchronised (the callers
        keep it referenced until then)."""
        array = np.ascontiguousarray(array)
        t = self.empty(array.shape, array.dtype)
        self.check(self.rt.cudaMemcpyAsync(t.ptr, array.ctypes.data, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
                   "cudaMemcpyAsync(HtoD)")
        return t

    def download(self, t: DeviceTensor) -> np.ndarray:
        """Device → host; waits for everything queued on the stream."""
        out = np.empty(t.shape, dtype=t.dtype)
        self.check(self.rt.cudaMemcpyAsync(out.ctypes.data, t.ptr, t.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
                   "cudaMemcpyAsync(DtoH)")
        self.sync()
        return out

    def gather_rows(self, t: DeviceTensor, rows: np.ndarray) -> DeviceTensor:
        """A new tensor whose row i is ``t``'s row ``rows[i]`` (axis 0). One device-to-device copy
        per run of consecutive source rows."""
        n_src = t.shape[0]
        row_bytes = t.nbytes // max(1, n_src)
        out = self.empty((len(rows), *t.shape[1:]), t.dtype)
        i = 0
        while i < len(rows):
            j = i + 1  # extend the run while the source rows are consecutive
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            src = int(rows[i])
            if not 0 <= src < n_src or src + (j - i) > n_src:
                raise EngineError(f"cache reorder: row {src} out of range ({n_src} rows)")
            self.check(self.rt.cudaMemcpyAsync(out.ptr + i * row_bytes, t.ptr + src * row_bytes,
                                               (j - i) * row_bytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                               self.stream), "cudaMemcpyAsync(DtoD)")
            i = j
        return out

    def sync(self) -> None:
        self.check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            self.sync()
            self.check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


# ---------------------------------------------------------------- one TensorRT engine


class _TrtGraph:
    """A deserialised TensorRT engine, its execution context and its I/O tensor names/types."""

    def __init__(self, trt, engine, cuda: _Cuda, graph: str) -> None:
        self.graph, self.engine, self.cuda = graph, engine, cuda
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineLoadError(f"TensorRT could not create an execution context for {graph} (GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, shape):
            raise EngineError(f"TensorRT {self.graph}: input {name} shape {shape} is outside the engine's "
                              "optimisation profile (load the engine with larger limits)")

    def output_shapes(self, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Output shapes for the given input shapes (no execution)."""
        for name in self.inputs:
            self._set_shape(name, tuple(input_shapes[name]))
        return {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}

    def run(self, feeds: dict[str, np.ndarray | DeviceTensor]) -> dict[str, DeviceTensor]:
        """Queue one execution. Host arrays are uploaded (converted to the engine's dtype), device
        tensors are used in place; outputs are new device tensors the caller frees."""
        uploaded, keep_alive = [], []
        try:
            for name in self.inputs:
                value = feeds[name]
                if isinstance(value, np.ndarray):
                    host = np.ascontiguousarray(value, dtype=self.dtypes[name])
                    keep_alive.append(host)
                    value = self.cuda.upload(host)
                    uploaded.append(value)
                elif value.dtype != self.dtypes[name]:
                    raise EngineError(f"TensorRT {self.graph}: input {name} is {value.dtype}, the engine wants "
                                      f"{self.dtypes[name]}")
                self._set_shape(name, value.shape)
                self.context.set_tensor_address(name, value.ptr)
            outs: dict[str, DeviceTensor] = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineError(f"TensorRT {self.graph}: output {name} has unresolved shape {shape}")
                outs[name] = self.cuda.empty(shape, self.dtypes[name])
                self.context.set_tensor_address(name, outs[name].ptr)
            if not self.context.execute_async_v3(self.cuda.stream_handle):
                self.cuda.free(*outs.values())
                raise EngineError(f"TensorRT {self.graph}: execute_async_v3 failed (see the TensorRT log)")
            return outs
        finally:
            self.cuda.free(*uploaded)  # stream-ordered: released after the execution has read them
            if uploaded:
                self.cuda.sync()  # the host copies in keep_alive may be released after this


# ---------------------------------------------------------------- the engine


class TensorRTCaptionEngine(WindowEngine):
    """A ``CaptionEngine`` on native TensorRT engines built from an engine folder's ONNX graphs."""

    def __init__(self, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 fp16: bool | None = None, limits: ProfileLimits | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, device: int = 0, verify_hashes: bool = True,
                 frame_cache_size: int = 256, intra_op_threads: int | None = None) -> None:
        del intra_op_threads  # ONNX Runtime's option; nothing to set here
        started = time.monotonic()
        missing = missing_prerequisites(device)
        if missing:
            raise EngineLoadError(f"the native TensorRT engine cannot run here: {missing}. It needs an NVIDIA GPU "
                                  f"with TensorRT 10+: {INSTALL_HINT}")
        import tensorrt as trt
        from tokenizers import Tokenizer

        self._trt = trt
        self.manifest = m = load_manifest(path, verify_hashes=verify_hashes)
        if m.precision == "int8":
            raise EngineLoadError(f"{path}: int8 engine folders use ONNX Runtime dynamic quantisation, which "
                                  "TensorRT cannot build; export fp16 (`--precision fp16`) or fp32 for TensorRT")
        self.name = m.name
        self.frames_per_window = m.frames_per_window
        # the trained spacing (both ends, window/(K-1) apart) kept on the stream's grid of that
        # step, so overlapping windows pick the same frames and the frame-feature cache hits
        self.frame_sampling = "aligned"
        self.window_s = m.window_s
        self.preprocessing = m.preprocessing
        self.fp16 = (m.precision == "fp16") if fp16 is None else bool(fp16)
        self.limits = limits or ProfileLimits(max_new_tokens=max(32, m.max_new_tokens))
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.workspace_bytes = int(workspace_bytes)
        self.cache = FrameFeatureCache(frame_cache_size if m.encoder_mode == "frame" else 0)
        kinds = ("key", "value")
        self._self_names = [f"{k}_{i}" for i in range(m.num_layers) for k in kinds]
        self._cross_names = [f"cross_{k}_{i}" for i in range(m.num_layers) for k in kinds] if m.cross_attention else []
        self.vision_frames_encoded = 0
        self.debug_logits: list[np.ndarray] | None = None  # a list collects every raw logits array (tests)
        self.built_graphs: list[str] = []
        self.cached_graphs: list[str] = []
        self.engine_files: dict[str, Path] = {}

        self._cuda: _Cuda | None = None
        self._graphs: dict[str, _TrtGraph] = {}
        try:
            self._cuda = _Cuda(_import_cudart(), device)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._load_graphs(manifest_digest(m.folder))
            self._tok = Tokenizer.from_file(str(m.path(m.tokenizer)))
        except EngineLoadError:
            self.close()
            raise
        except Exception as e:  # CUDA errors (EngineError) and TensorRT's own exceptions: one boundary here
            self.close()
            raise EngineLoadError(f"could not load TensorRT engine {path}: {e}") from e
        self._vision = self._graphs["vision_encoder"]
        self._prefill = self._graphs["decoder_prefill"]
        self._step = self._graphs["decoder_step"]
        self.load_s = time.monotonic() - started
        log.info("engine %s loaded from %s (TensorRT %s on %s, %s, built %s, cached %s, %.1f s)", self.name, path,
                 trt.__version__, self._cuda.gpu_name, "fp16" if self.fp16 else "fp32",
                 ",".join(self.built_graphs) or "-", ",".join(self.cached_graphs) or "-", self.load_s)

    # ------------------------------------------------------------------ engine build / cache

    def _load_graphs(self, digest: str) -> None:
        trt, m = self._trt, self.manifest
        precision = "fp16" if self.fp16 else "fp32"
        profile = f"{self.limits.describe()},workspace={self.workspace_bytes}"
        sizes: dict[str, int | None] = {"enc_tokens": None, "cross_tokens": None}
        for graph in GRAPH_ORDER:
            key = engine_cache_key(self._cuda.gpu_name, trt.__version__, digest, graph, precision, profile=profile)
            file = self.cache_dir / f"{key}.engine"
            self.engine_files[graph] = file
            engine = None
            if file.is_file():
                engine = self._runtime.deserialize_cuda_engine(file.read_bytes())
                if engine is None:
                    log.warning("cached TensorRT engine %s could not be loaded; building it again", file)
                else:
                    self.cached_graphs.append(graph)
            if engine is None:
                plan = self._build(graph, m.path(m.graphs[graph]), sizes)
                self._save(file, plan)
                engine = self._runtime.deserialize_cuda_engine(plan)
                if engine is None:
                    raise EngineLoadError(f"TensorRT built {graph} but could not deserialise it")
                self.built_graphs.append(graph)
            g = self._graphs[graph] = _TrtGraph(trt, engine, self._cuda, graph)
            self._record_sizes(graph, g, sizes)

    def _record_sizes(self, graph: str, g: _TrtGraph, sizes: dict[str, int | None]) -> None:
        """Sizes the next graph's profile needs, read from this engine at its smallest input shapes:
        the vision encoder's output length (T) and the prefill's cross-attention length."""
        if graph == "decoder_step" or (graph == "decoder_prefill" and not self._cross_names):
            return
        shapes = {}
        for n in g.inputs:
            shape = tuple(int(d) for d in g.engine.get_tensor_shape(n))  # -1 = dynamic
            if any(d < 0 for d in shape):
                shape = tuple(int(d) for d in g.engine.get_tensor_profile_shape(n, 0)[0])  # profile 0's min
            shapes[n] = shape
        out = g.output_shapes(shapes)
        if graph == "vision_encoder":
            sizes["enc_tokens"] = int(out["features"][-2])
        elif graph == "decoder_prefill" and self._cross_names:
            sizes["cross_tokens"] = int(out[self._cross_names[0]][2])

    def _build(self, graph: str, onnx_path: Path, sizes: dict[str, int | None]) -> bytes:
        trt, m = self._trt, self.manifest
        log.info("building the TensorRT engine for %s (%s); this takes a while the first time", graph, onnx_path)
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights resolve beside it
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineLoadError(f"TensorRT could not parse {onnx_path}: {errors}")
        inputs = {}
        for i in range(network.num_inputs):
            t = network.get_input(i)
            inputs[t.name] = tuple(int(d) for d in t.shape)
        try:
            shapes = profile_shapes(graph, inputs, self.limits, frames=m.frames_per_window,
                                    encoder_mode=m.encoder_mode, prefix_tokens=m.prefix_tokens,
                                    enc_tokens=sizes["enc_tokens"], cross_tokens=sizes["cross_tokens"])
        except ValueError as e:
            raise EngineLoadError(f"{onnx_path}: {e}") from e
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            if any(d < 0 for d in inputs[name]):  # static inputs need no profile entry
                profile.set_shape(name, lo, opt, hi)
        config = builder.create_builder_config()
        config.add_optimization_profile(profile)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        else:  # fp32 means fp32: no TF32 matmuls (on by default), so captions match ONNX Runtime's
            config.clear_flag(trt.BuilderFlag.TF32)
        timing_key = engine_cache_key(self._cuda.gpu_name, trt.__version__, "", "timing-cache", "any")
        timing_file = self.cache_dir / f"{timing_key}.timing"
        timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
        config.set_timing_cache(timing, False)  # False: a mismatching cache is not used
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineLoadError(f"TensorRT could not build an engine for {onnx_path} (see the TensorRT log above)")
        self._save(timing_file, config.get_timing_cache().serialize())
        return bytes(plan)

    def _save(self, file: Path, data) -> None:
        """Write ``data`` atomically (temp file + rename); a read-only cache only costs a rebuild later."""
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
            tmp.write_bytes(bytes(data))
            os.replace(tmp, file)
        except OSError as e:
            log.warning("could not write the TensorRT cache file %s: %s", file, e)

    # ------------------------------------------------------------------ public

    def caption_batch(self, windows: Sequence[Sequence[np.ndarray]], *, prompt: str | None = None,
                      keys: Sequence[Sequence[Hashable]] | None = None, max_new_tokens: int | None = None,
                      **decode_options) -> list[CaptionResult]:
        """Caption each window (exactly ``frames_per_window`` frames); same contract as
        OnnxCaptionEngine.caption_batch. Batches above ``limits.max_batch`` run in chunks."""
        if not windows:
            return []
        if self._cuda is None:
            raise EngineError(f"engine {self.name} is closed")
        lim = self.limits
        if len(windows) > lim.max_batch:
            out: list[CaptionResult] = []
            for i in range(0, len(windows), lim.max_batch):
                out += self.caption_batch(windows[i:i + lim.max_batch], prompt=prompt,
                                          keys=None if keys is None else keys[i:i + lim.max_batch],
                                          max_new_tokens=max_new_tokens, **decode_options)
            return out
        self._check_windows(windows)
        opts = self._decode_options(max_new_tokens, decode_options)
        prompt_ids = self._prompt_ids(prompt)
        for what, asked, limit in (("num_beams", opts.num_beams, lim.max_beams),
                                   ("max_new_tokens", opts.max_new_tokens, lim.max_new_tokens),
                                   ("prompt tokens (start token included)", len(prompt_ids), lim.max_prompt_tokens)):
            if asked > limit:
                raise EngineError(f"engine {self.name}: {what} {asked} is above the TensorRT profile's limit "
                                  f"{limit} (load it with larger ProfileLimits)")
        self._cuda.use_device()  # the pipeline calls from an executor thread; the device is per thread
        feats = self._window_features(windows, keys)
        ids = np.tile(np.asarray(prompt_ids, dtype=np.int64), (len(windows), 1))
        out = self._prefill.run({"features": feats, "input_ids": ids})
        state = {"self": [out.pop(f"present_{n}") for n in self._self_names],
                 "cross": [out.pop(n) for n in self._cross_names]}
        cuda = self._cuda

        def step(tokens: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
            if parents is not None:  # row i continues from old row parents[i]
                parents = np.asarray(parents, dtype=np.int64)
                for part in ("self", "cross"):
                    old = state[part]
                    if not old or (len(parents) == old[0].shape[0] and (parents == np.arange(len(parents))).all()):
                        continue
                    state[part] = [cuda.gather_rows(t, parents) for t in old]
                    cuda.free(*old)
            feed: dict[str, np.ndarray | DeviceTensor] = {"input_ids": tokens.reshape(-1, 1).astype(np.int64)}
            feed.update({f"past_{n}": t for n, t in zip(self._self_names, state["self"])})
            feed.update(zip(self._cross_names, state["cross"]))
            res = self._step.run(feed)
            cuda.free(*state["self"])  # stream-ordered: after the step has read them
            state["self"] = [res.pop(f"present_{n}") for n in self._self_names]
            logits = self._logits(res)
            return logits

        try:
            first = self._logits(out)
            m = self.manifest
            hyps = decode(first, prompt_ids, step, opts, eos_id=m.eos_token_id, pad_id=m.pad_token_id)
        finally:
            cuda.free(*state["self"], *state["cross"], *out.values())
        return self._results(hyps)

    def close(self) -> None:
        """Release the engines and the stream (idempotent)."""
        self._graphs = {}
        self._vision = self._prefill = self._step = None  # type: ignore[assignment]
        cuda, self._cuda = getattr(self, "_cuda", None), None
        if cuda is not None:
            try:
                cuda.close()
            except EngineError as e:  # closing must not hide the error that led here
                log.warning("closing the CUDA stream failed: %s", e)
        self.cache.clear()

    # ------------------------------------------------------------------ internals

    def _logits(self, outputs: dict[str, DeviceTensor]) -> np.ndarray:
        t = outputs.pop("logits")
        try:
            logits = self._cuda.download(t).astype(np.float32, copy=False)
        finally:
            self._cuda.free(t)
        if self.debug_logits is not None:
            self.debug_logits.append(logits)
        return logits

    def _run_to_host(self, graph: _TrtGraph, feeds: dict, output: str) -> np.ndarray:
        outs = graph.run(feeds)
        try:
            return self._cuda.download(outs[output])
        finally:
            self._cuda.free(*outs.values())

    def _run_vision(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run_to_host(self._vision, {"pixel_values": pixel_values}, "features")


__all__ = ["INSTALL_HINT", "DeviceTensor", "TensorRTCaptionEngine", "missing_prerequisites"]
