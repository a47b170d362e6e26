"""Precision conversion of an exported (fp32) engine folder, in place.

- ``int8``: ONNX Runtime dynamic quantisation (weights int8, activations quantised on the fly) of the
  MatMul/Gemm weights — the CPU path;
- ``fp16``: float16 weights and activations with float32 inputs/outputs kept (``keep_io_types``), so
  the runtime feeds the same arrays — the GPU path (CUDA / TensorRT); ONNX Runtime's CPU provider
  runs it too, slowly.

The manifest's ``precision`` and file hashes are rewritten. Needs ``onnx`` and ``onnxruntime``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from streamcap.engine.manifest import MANIFEST_NAME, file_sha256
from streamcap.export.base import ExportError

log = logging.getLogger(__name__)


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     per_channel=True)


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    onnx.save(model, str(dst))


CONVERTERS = {"int8": _int8, "fp16": _fp16}


def convert_precision(folder: str | Path, precision: str) -> Path:
    """Convert every graph of the fp32 engine ``folder`` to ``precision`` (``int8`` or ``fp16``)."""
    folder = Path(folder)
    if precision not in CONVERTERS:
        raise ExportError(f"precision {precision!r}: choose int8 (CPU) or fp16 (GPU)")
    mpath = folder / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    if manifest.get("precision", "fp32") != "fp32":
        raise ExportError(f"{folder} is already {manifest['precision']}; convert from an fp32 export")
    for name in manifest["graphs"].values():
        src = folder / name
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            dst = Path(tmp) / name
            CONVERTERS[precision](src, dst)
            os.replace(dst, src)
        log.info("%s: %s → %s", src, "fp32", precision)
    manifest["precision"] = precision
    manifest["files"] = {f: file_sha256(folder / f) for f in manifest["files"]}
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
