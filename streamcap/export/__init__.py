"""Exporters: a local Hugging Face checkpoint folder → a streamcap engine folder.

``export_checkpoint(src, out, precision=..., frames=...)`` reads ``src/config.json`` and hands the
checkpoint to the exporter of its architecture; precision conversion (fp16, int8) runs after the
fp32 export (``streamcap.export.quantize``). Needs the ``export`` extra (torch, transformers).
"""

from __future__ import annotations

import json
from pathlib import Path

from streamcap.export.base import PRECISIONS, ExportError, ExportOptions

# Hugging Face class name → exporter module (streamcap.export.<module>.export)
EXPORTERS = {
    "GitForCausalLM": "git",
    "BlipForConditionalGeneration": "blip",
    "VisionEncoderDecoderModel": "ved",
    "WhisperForConditionalGeneration": "whisper",
}


def detect_architecture(src: Path) -> str:
    cfg_path = Path(src) / "config.json"
    if not Path(src).is_dir():
        raise ExportError(f"{src} is not a folder (give a local checkpoint folder saved with save_pretrained)")
    if not cfg_path.is_file():
        raise ExportError(f"{src} has no config.json: not a Hugging Face checkpoint folder")
    cfg = json.loads(cfg_path.read_text())
    archs = cfg.get("architectures") or []
    if not archs and cfg.get("model_type") == "vision-encoder-decoder":
        archs = ["VisionEncoderDecoderModel"]
    for a in archs:
        if a in EXPORTERS:
            return a
    raise ExportError(f"{src}: model {archs or cfg.get('model_type')!r} is not supported; supported: "
                      f"{', '.join(EXPORTERS)}")


def export_checkpoint(src: str | Path, out: str | Path, *, precision: str = "fp32", frames: int | None = None,
                      window_s: float = 2.0, max_new_tokens: int = 20, name: str | None = None) -> Path:
    """Export ``src`` into the engine folder ``out`` and return ``out``."""
    import importlib

    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    src, out = Path(src), Path(out)
    arch = detect_architecture(src)
    module = importlib.import_module(f"streamcap.export.{EXPORTERS[arch]}")
    opts = ExportOptions(precision="fp32", frames=frames, window_s=window_s, max_new_tokens=max_new_tokens,
                         name=name)
    try:
        module.export(src, out, opts)
    except ExportError:
        raise
    except Exception as e:  # boundary: torch/transformers/onnx errors become one clear export error
        raise ExportError(f"could not export {src} ({arch}): {type(e).__name__}: {e}") from e
    if precision != "fp32":
        from streamcap.export.quantize import convert_precision

        convert_precision(out, precision)
    return out


__all__ = ["EXPORTERS", "ExportError", "ExportOptions", "detect_architecture", "export_checkpoint"]
