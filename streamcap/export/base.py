"""What every exporter shares: options, preprocessing and tokenizer discovery, the manifest.

An exporter turns one local Hugging Face checkpoint folder into a streamcap engine folder
(``engine.json`` format 2, see docs/engine-format.md). Each architecture has its own module
(``git.py``, ``blip.py``, ``ved.py``) exposing ``export(checkpoint, out, opts) -> Path``;
``streamcap.export.export_checkpoint`` picks one from the checkpoint's ``config.json``.

Needs torch + transformers (the ``export`` extra); never imported by the server.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from streamcap.engine.manifest import MANIFEST_NAME, file_sha256
from streamcap.engine.preprocess import Preprocessing
from streamcap.core.errors import StreamcapError

log = logging.getLogger(__name__)

OPSET = 17
FORMAT_VERSION = 2
PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(StreamcapError):
    code = "export_failed"


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    frames: int | None = None  # frames per window; None = the checkpoint's own (1 for image models)
    window_s: float = 2.0
    max_new_tokens: int = 20
    name: str | None = None
    opset: int = OPSET


def read_preprocessing(checkpoint: Path, *, size: int, default_mean, default_std,
                       default_resize: str) -> Preprocessing:
    """Preprocessing from the checkpoint's ``preprocessor_config.json`` when present (real
    checkpoints ship one), else the architecture's defaults."""
    p = Path(checkpoint) / "preprocessor_config.json"
    mean, std, resize = tuple(default_mean), tuple(default_std), default_resize
    if p.is_file():
        cfg = json.loads(p.read_text())
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
        if cfg.get("do_center_crop"):
            resize = "center_crop"
        elif "do_center_crop" in cfg:
            resize = "stretch"
    else:
        log.warning("%s has no preprocessor_config.json; using the %s defaults (mean %s, std %s)",
                    checkpoint, default_resize, mean, std)
    return Preprocessing(int(size), tuple(float(x) for x in mean), tuple(float(x) for x in std), resize)


def copy_tokenizer(checkpoint: Path, out: Path) -> str:
    """Copy the fast tokenizer (``tokenizer.json``) beside the graphs; return its file name."""
    src = Path(checkpoint) / "tokenizer.json"
    if not src.is_file():
        raise ExportError(f"{checkpoint} has no tokenizer.json: save the model's fast tokenizer beside it "
                          "(AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder))")
    shutil.copy(src, Path(out) / "tokenizer.json")
    return "tokenizer.json"


def write_manifest(out: Path, fields: dict, files: list[str]) -> Path:
    """Write ``engine.json`` with the common header, ``fields`` and the files' sha256."""
    out = Path(out)
    manifest = {"format": "streamcap-engine", "format_version": FORMAT_VERSION, "runtime": "onnxruntime",
                **fields, "files": {f: file_sha256(out / f) for f in files}}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
