"""Pure helpers for the two TensorRT paths (no tensorrt, CUDA or onnxruntime import here).

- ONNX Runtime's TensorRT execution provider (``engine.provider = "tensorrt"``):
  :func:`tensorrt_provider_options` gives the provider options dict for ``TensorrtExecutionProvider``
  (engine + timing cache on disk, fp16). ORT picks its own optimisation profiles from the shapes it
  sees (and rebuilds when a shape falls outside them), so none are given here.
- The native TensorRT engine (``engine.provider = "tensorrt-native"``, streamcap.engine.tensorrt):
  :func:`engine_cache_key` names a serialised engine file, :func:`profile_shapes` gives the
  min/opt/max shapes of every dynamic input of a graph.

:func:`manifest_digest` is the sha256 of ``engine.json``: the manifest lists the sha256 of every
graph file, so it changes whenever any graph, the precision or the decoder layout changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamcap.engine.manifest import MANIFEST_NAME

DEFAULT_WORKSPACE_BYTES = 2 << 30  # 2 GiB of builder scratch memory
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_cache_dir() -> Path:
    """Where serialised TensorRT engines go unless ``engine.trt_cache_dir`` says otherwise."""
    return Path.home() / ".cache" / "streamcap" / "trt"


def manifest_digest(folder: str | Path) -> str:
    """sha256 (hex) of the engine folder's ``engine.json`` bytes."""
    return hashlib.sha256((Path(folder) / MANIFEST_NAME).read_bytes()).hexdigest()


def _slug(text: str, limit: int = 40) -> str:
    """Lower-case, ``[a-z0-9._-]`` only, no leading dots, at most ``limit`` characters."""
    s = _UNSAFE.sub("-", text.strip().lower()).strip("-.")
    return s[:limit].rstrip("-.") or "x"


def engine_cache_key(gpu_name: str, trt_version: str, manifest_sha256: str, graph: str, precision: str, *,
                     profile: str = "") -> str:
    """A stable, filesystem-safe name for one serialised TensorRT engine.

    A readable part (GPU, TensorRT version, graph, precision) followed by 16 hex digits of a sha256
    over every input, so two inputs that slug to the same text still get different keys. ``profile``
    is any further build setting the engine depends on (optimisation profile limits, workspace).
    Only ``[a-z0-9._-]`` characters; at most about 130 characters.
    """
    parts = (gpu_name, trt_version, manifest_sha256, graph, precision, profile)
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return "-".join([_slug(gpu_name), "trt" + _slug(trt_version, 20), _slug(graph, 32), _slug(precision, 8),
                     digest])


def tensorrt_provider_options(cache_dir: str | Path, manifest_sha: str, fp16: bool, *, ort_version: str = "",
                              trt_version: str = "",
                              workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> dict[str, str]:
    """Provider options for ONNX Runtime's ``TensorrtExecutionProvider``.

    Engines (and the timing cache, which ORT keeps beside them when no timing cache path is
    given) go to ``cache_dir/<key>``, one folder per engine folder + precision (+ ORT/TensorRT
    version when given: ORT asks for the cache to be cleared when either changes). ORT names its
    engine files after the graph and the GPU's compute capability, so one folder serves several
    GPUs. Values are strings, the form every ORT version parses. The caller creates the folder
    (``Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)``).
    """
    precision = "fp16" if fp16 else "fp32"
    key = engine_cache_key("ort-trt-ep", trt_version or "any", manifest_sha, "all-graphs", precision,
                           profile=f"onnxruntime={ort_version}")
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(Path(cache_dir) / key),
        "trt_timing_cache_enable": "True",
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_max_workspace_size": str(int(workspace_bytes)),
    }


# ---------------------------------------------------------------- native TensorRT optimisation profiles

Range = tuple[int, int, int]  # min, opt, max


@dataclass(frozen=True)
class ProfileLimits:
    """The largest shapes a native TensorRT engine is built for. Larger requests are refused at
    caption time (batches larger than ``max_batch`` are split instead)."""

    max_batch: int = 8  # windows per caption_batch call
    max_beams: int = 4  # beam width (the decoder step sees max_batch × max_beams rows)
    max_prompt_tokens: int = 16  # start token + prompt
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_beams", "max_prompt_tokens", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")

    def describe(self) -> str:
        return (f"batch={self.max_batch},beams={self.max_beams},prompt={self.max_prompt_tokens},"
                f"new={self.max_new_tokens}")


def profile_shapes(graph: str, inputs: Mapping[str, Sequence[int]], limits: ProfileLimits, *, frames: int,
                   encoder_mode: str, prefix_tokens: int, enc_tokens: int | None = None,
                   cross_tokens: int | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shapes for every input of ``graph`` (docs/engine-format.md names and layouts).

    ``inputs`` maps input names to their shapes as the ONNX parser reports them (-1 = dynamic).
    Static axes keep their size; dynamic ones are bounded by what streamcap feeds:

    - axis 0 is the batch: frames to encode (frame mode, up to ``max_batch × frames``), windows
      (vision in clip mode, prefill: up to ``max_batch``) or rows (step: ``max_batch × max_beams``);
    - prefill ``input_ids`` axis 1: the prompt length, 1 … ``max_prompt_tokens``;
    - prefill ``features``: frame mode (B, K, T, D) — K = ``frames``, T = ``enc_tokens`` (the
      vision encoder's tokens per item); clip mode (B, T, D);
    - step ``past_*`` axis 2: the cache length, ``prefix_tokens`` + 1 …
      ``prefix_tokens + max_prompt_tokens + max_new_tokens``;
    - ``cross_*`` axis 2: ``cross_tokens`` (the encoder length the prefill reports).

    Returns ``{name: (min_shape, opt_shape, max_shape)}``. Raises ValueError for a dynamic axis
    it has no rule for, or a rule that needs a size that was not given.
    """
    if graph not in ("vision_encoder", "decoder_prefill", "decoder_step"):
        raise ValueError(f"unknown graph {graph!r}")
    lim = limits
    if graph == "vision_encoder":
        batch: Range = ((1, frames, lim.max_batch * frames) if encoder_mode == "frame" else (1, 1, lim.max_batch))
    elif graph == "decoder_prefill":
        batch = (1, 1, lim.max_batch)
    else:
        batch = (1, 1, lim.max_batch * lim.max_beams)
    past_max = prefix_tokens + lim.max_prompt_tokens + lim.max_new_tokens
    past: Range = (prefix_tokens + 1, min(past_max, prefix_tokens + 1 + lim.max_new_tokens // 2), past_max)

    def need(value: int | None, what: str, name: str, axis: int) -> Range:
        if value is None:
            raise ValueError(f"{graph}: input {name} axis {axis} is dynamic and needs {what}, which was not given")
        return (value, value, value)

    out: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, shape in inputs.items():
        ranges: list[Range] = []
        for axis, dim in enumerate(shape):
            dim = int(dim)
            if dim >= 0:
                r: Range = (dim, dim, dim)
            elif axis == 0:
                r = batch
            elif graph == "decoder_prefill" and name == "input_ids" and axis == 1:
                r = (1, 1, lim.max_prompt_tokens)
            elif graph == "decoder_prefill" and name == "features" and encoder_mode == "frame" and axis == 1:
                r = (frames, frames, frames)
            elif graph == "decoder_prefill" and name == "features" and axis == len(shape) - 2:
                r = need(enc_tokens, "enc_tokens (the vision encoder's output length)", name, axis)
            elif graph == "decoder_step" and name.startswith("past_") and axis == 2:
                r = past
            elif name.startswith("cross_") and axis == 2:
                r = need(cross_tokens, "cross_tokens (the prefill's cross-attention length)", name, axis)
            else:
                raise ValueError(f"{graph}: input {name} has a dynamic axis {axis} (shape {tuple(shape)}) "
                                 "that streamcap does not know how to bound")
            ranges.append(r)
        out[name] = tuple(tuple(r[i] for r in ranges) for i in range(3))
    return out


__all__ = ["DEFAULT_WORKSPACE_BYTES", "ProfileLimits", "default_cache_dir", "engine_cache_key", "manifest_digest", "profile_shapes",
           "tensorrt_provider_options"]
