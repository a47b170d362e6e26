"""Engine folder manifest (``engine.json``): reading, validating and hashing. Pure file I/O.

Two kinds of engine share the header (format, version, runtime, graphs, files): caption engines
(no ``kind`` field, or ``"kind": "caption"``; :func:`load_manifest`) and speech engines
(``"kind": "speech"``, Whisper; :func:`load_speech_manifest`). Each loader refuses the other kind
with a message naming the right one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from streamcap.engine.preprocess import Preprocessing
from streamcap.core.errors import EngineLoadError

MANIFEST_NAME = "engine.json"
SUPPORTED_FORMAT_VERSION = 2
ARCHITECTURES = ("git", "blip", "vision-encoder-decoder")
GRAPHS = ("vision_encoder", "decoder_prefill", "decoder_step")
SPEECH_KIND = "speech"
SPEECH_ARCHITECTURES = ("whisper",)
SPEECH_GRAPHS = ("encoder", "decoder")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    folder: Path
    name: str
    architecture: str
    frames_per_window: int
    window_s: float
    preprocessing: Preprocessing
    tokenizer: str
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    max_new_tokens: int
    graphs: dict[str, str]
    files: dict[str, str]
    precision: str
    encoder_mode: str  # "frame" (vision encoder per frame, cacheable) or "clip" (whole window)
    num_layers: int
    cross_attention: bool
    prefix_tokens: int
    raw: dict

    def path(self, name: str) -> Path:
        return self.folder / name


def _read_raw(folder: Path) -> dict:
    """The parsed ``engine.json`` of ``folder`` after the header checks every kind shares."""
    mpath = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise EngineLoadError(f"engine folder {folder} does not exist")
    if not mpath.is_file():
        raise EngineLoadError(f"{folder} is not an engine folder: no {MANIFEST_NAME} "
                              "(export one with tools/train_shapes.py or `streamcap export`)")
    try:
        raw = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EngineLoadError(f"{mpath} is not valid JSON: {e}") from e
    if raw.get("format") != "streamcap-engine":
        raise EngineLoadError(f"{mpath}: not a streamcap engine manifest")
    if raw.get("format_version") == 1:
        raise EngineLoadError(f"{mpath}: format_version 1 (no decoder cache) is no longer read; re-export it "
                              "(`streamcap export CHECKPOINT --out FOLDER`, or tools/train_shapes.py --export-only)")
    if raw.get("format_version") != SUPPORTED_FORMAT_VERSION:
        raise EngineLoadError(f"{mpath}: format_version {raw.get('format_version')!r} is not supported "
                              f"(this streamcap reads {SUPPORTED_FORMAT_VERSION})")
    return raw


def _check_files(folder: Path, names: list[str], files: dict[str, str], verify_hashes: bool) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise EngineLoadError(f"{folder}: manifest names {name} but the file is missing")
    if verify_hashes:
        for name, digest in files.items():
            p = folder / name
            if not p.is_file():
                raise EngineLoadError(f"{folder}: {name} listed in the manifest is missing")
            if file_sha256(p) != digest:
                raise EngineLoadError(f"{folder}: {name} does not match its sha256 in {MANIFEST_NAME} "
                                      "(corrupt or partially copied engine folder)")


def load_manifest(folder: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """Read and check ``folder/engine.json`` of a caption engine; raise EngineLoadError with a clear
    reason."""
    folder = Path(folder)
    mpath = folder / MANIFEST_NAME
    raw = _read_raw(folder)
    if raw.get("kind", "caption") != "caption":
        loader = ("streamcap.engine.detector.load_detector" if raw.get("kind") == "describer"
                  else "streamcap.engine.whisper.load_speech_engine")
        raise EngineLoadError(f"{mpath}: a {raw.get('kind')} engine ({raw.get('architecture')}), not a caption "
                              f"engine: load it with {loader}")
    try:
        m = Manifest(
            folder=folder, name=str(raw["name"]), architecture=str(raw["architecture"]),
            frames_per_window=int(raw["frames_per_window"]), window_s=float(raw.get("window_s", 2.0)),
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]), tokenizer=str(raw["tokenizer"]),
            bos_token_id=int(raw["bos_token_id"]), eos_token_id=int(raw["eos_token_id"]),
            pad_token_id=int(raw["pad_token_id"]), max_new_tokens=int(raw.get("max_new_tokens", 20)),
            graphs=dict(raw["graphs"]), files=dict(raw.get("files", {})),
            precision=str(raw.get("precision", "fp32")), encoder_mode=str(raw.get("encoder_mode", "frame")),
            num_layers=int(raw["decoder"]["num_layers"]), cross_attention=bool(raw["decoder"]["cross_attention"]),
            prefix_tokens=int(raw["decoder"].get("prefix_tokens", 0)), raw=raw,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise EngineLoadError(f"{mpath}: missing or invalid field: {e}") from e
    if m.architecture not in ARCHITECTURES:
        raise EngineLoadError(f"{mpath}: architecture {m.architecture!r} is not supported "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    if m.encoder_mode not in ("frame", "clip"):
        raise EngineLoadError(f"{mpath}: encoder_mode must be 'frame' or 'clip', not {m.encoder_mode!r}")
    missing = [g for g in GRAPHS if g not in m.graphs]
    if missing:
        raise EngineLoadError(f"{mpath}: graphs {missing} are missing from the manifest")
    _check_files(folder, [*m.graphs.values(), m.tokenizer], m.files, verify_hashes)
    return m


@dataclass(frozen=True)
class SpeechManifest:
    """A speech (Whisper) engine folder: graphs ``encoder`` and ``decoder``, the mel settings and
    the generation facts (``whisper``: token ids, languages, suppress lists)."""

    folder: Path
    name: str
    architecture: str
    precision: str
    tokenizer: str
    graphs: dict[str, str]
    files: dict[str, str]
    num_layers: int
    num_heads: int
    head_dim: int
    vocab_size: int
    encoder_positions: int
    sample_rate: int
    n_mels: int
    n_frames: int
    whisper: dict
    licence: str
    source: str
    raw: dict

    def path(self, name: str) -> Path:
        return self.folder / name


_WHISPER_IDS = ("sot", "eot", "sot_prev", "no_timestamps", "no_speech", "timestamp_begin", "max_target_positions")


def load_speech_manifest(folder: str | Path, *, verify_hashes: bool = True) -> SpeechManifest:
    """Read and check ``folder/engine.json`` of a speech engine; raise EngineLoadError with a clear
    reason."""
    folder = Path(folder)
    mpath = folder / MANIFEST_NAME
    raw = _read_raw(folder)
    if raw.get("kind") != SPEECH_KIND:
        raise EngineLoadError(f"{mpath}: a caption engine ({raw.get('architecture')}), not a speech engine: "
                              "load it with streamcap.engine.load_engine")
    try:
        dec, audio, w = raw["decoder"], raw["audio"], dict(raw["whisper"])
        m = SpeechManifest(
            folder=folder, name=str(raw["name"]), architecture=str(raw["architecture"]),
            precision=str(raw.get("precision", "fp32")), tokenizer=str(raw["tokenizer"]), graphs=dict(raw["graphs"]),
            files=dict(raw.get("files", {})), num_layers=int(dec["num_layers"]), num_heads=int(dec["num_heads"]),
            head_dim=int(dec["head_dim"]), vocab_size=int(dec["vocab_size"]),
            encoder_positions=int(dec["encoder_positions"]), sample_rate=int(audio["sample_rate"]),
            n_mels=int(audio["n_mels"]), n_frames=int(audio["n_frames"]), whisper=w,
            licence=str(raw.get("licence", "unknown")), source=str(raw.get("source", "unknown")), raw=raw,
        )
        for key in _WHISPER_IDS:
            int(w[key])
        dict(w["languages"])
    except (KeyError, TypeError, ValueError) as e:
        raise EngineLoadError(f"{mpath}: missing or invalid field: {e}") from e
    if m.architecture not in SPEECH_ARCHITECTURES:
        raise EngineLoadError(f"{mpath}: speech architecture {m.architecture!r} is not supported "
                              f"(supported: {', '.join(SPEECH_ARCHITECTURES)})")
    missing = [g for g in SPEECH_GRAPHS if g not in m.graphs]
    if missing:
        raise EngineLoadError(f"{mpath}: graphs {missing} are missing from the manifest")
    _check_files(folder, [*m.graphs.values(), m.tokenizer], m.files, verify_hashes)
    return m
